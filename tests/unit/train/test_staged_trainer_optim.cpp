// StagedTrainer's optimisation against hand-computed references: per-stage parameter groups, SGD with
// (Nesterov) momentum, gradient accumulation over a short last micro-batch, and the EMA — updated only
// in the stages that enable it and used for evaluation when asked.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;

/// Mean cross-entropy gradient of `net` on all of `data`, computed here with autograd (not by the trainer).
std::map<std::string, torch::Tensor> full_batch_grads(MlpImpl& net, const kd::data::TensorDataset& data) {
  for (auto& p : net.parameters()) p.mutable_grad() = torch::Tensor();
  torch::nn::functional::cross_entropy(net.forward(data.inputs).logits, data.targets).backward();
  std::map<std::string, torch::Tensor> g;
  for (auto& item : net.named_parameters()) g[item.key()] = item.value().grad().detach().clone();
  for (auto& p : net.parameters()) p.mutable_grad() = torch::Tensor();
  return g;
}

std::map<std::string, torch::Tensor> params_of(MlpImpl& net) {
  std::map<std::string, torch::Tensor> out;
  for (auto& item : net.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

kd::StagedTrainerOptions plain_sgd(int64_t batch) {
  return kd::StagedTrainerOptions().optimizer(kd::OptimizerKind::kSgd).momentum(0).weight_decay(0).clip_norm(0)
      .batch_size(batch);
}

}  // namespace

TEST(StagedTrainerOptim, ParamGroupsStepEachGroupAtItsOwnLr) {
  const auto data = synthetic(32, 1);
  torch::manual_seed(3);
  auto net = std::make_shared<MlpImpl>();
  const auto before = params_of(*net);
  const auto grads = full_batch_grads(*net, data);
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).lr(0.01)
                           .param_groups({kd::ParamGroup{{"fc2\\."}, 0.3}})},
                      plain_sgd(32));
  t.fit(data);
  const auto after = params_of(*net);
  for (const auto& [name, g] : grads) {
    const double lr = name.rfind("fc2.", 0) == 0 ? 0.3 : 0.01;
    EXPECT_TRUE(torch::allclose(after.at(name), before.at(name) - lr * g, 1e-5, 1e-7)) << name;
  }
}

TEST(StagedTrainerOptim, ParamGroupErrorsNameTheStageAndGroup) {
  auto make = [](std::vector<kd::ParamGroup> groups) {
    kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                        {kd::Stage("s", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).param_groups(groups)});
    t.fit(synthetic(8, 0));
  };
  try {
    make({kd::ParamGroup{{"^nothing"}, 0.1}});
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage 's': param_groups[0] matches no trainable student parameter"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(make({kd::ParamGroup{{"("}, 0.1}}), kd::Error);   // bad regex
  EXPECT_THROW(make({kd::ParamGroup{{"fc1"}, 0.0}}), kd::Error);  // lr must be > 0
}

TEST(StagedTrainerOptim, SgdNesterovFollowsTheTextbookRecurrence) {
  const auto data = synthetic(32, 2);
  torch::manual_seed(4);
  auto net = std::make_shared<MlpImpl>();
  auto ref = std::make_shared<MlpImpl>();
  {
    torch::NoGradGuard g;
    auto a = net->parameters(), b = ref->parameters();
    for (size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
  }
  const double lr = 0.05, mu = 0.9;
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(lr)},
                      plain_sgd(32).momentum(mu).nesterov(true).min_lr_factor(1.0));  // constant lr
  t.fit(data);
  // v ← μ·v + g;  θ ← θ − lr·(g + μ·v)   (v starts as g, as in PyTorch)
  std::map<std::string, torch::Tensor> v;
  for (int step = 0; step < 3; ++step) {
    const auto g = full_batch_grads(*ref, data);
    torch::NoGradGuard no_grad;
    for (auto& item : ref->named_parameters()) {
      const auto& gi = g.at(item.key());
      v[item.key()] = step == 0 ? gi.clone() : mu * v[item.key()] + gi;
      item.value().sub_(lr * (gi + mu * v[item.key()]));
    }
  }
  const auto a = params_of(*net), b = params_of(*ref);
  for (const auto& [name, x] : a) EXPECT_TRUE(torch::allclose(x, b.at(name), 1e-5, 1e-6)) << name;
  EXPECT_THROW(kd::StagedTrainer(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                                 {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(1)},
                                 plain_sgd(8).momentum(0).nesterov(true))
                   .fit(data),
               kd::Error);
}

TEST(StagedTrainerOptim, AccumulationOverAShortLastMicroBatchIsTheMeanOverTheStepsExamples) {
  // 40 examples, micro-batches of 16, 3 per step: one step over 16 + 16 + 8 = all 40 examples,
  // so the step must equal one SGD step on the mean loss over the 40 (not the mean of 3 means).
  const auto data = synthetic(40, 6);
  torch::manual_seed(8);
  auto net = std::make_shared<MlpImpl>();
  const auto before = params_of(*net);
  const auto grads = full_batch_grads(*net, data);
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).lr(0.2)},
                      plain_sgd(16).accumulation(3));
  t.fit(data);
  const auto after = params_of(*net);
  for (const auto& [name, g] : grads) {
    EXPECT_TRUE(torch::allclose(after.at(name), before.at(name) - 0.2 * g, 1e-5, 1e-7)) << name;
  }
}

TEST(StagedTrainerOptim, AccumulationOverUnevenlyPaddedSequencesIsTheMeanOverTheStepsTokens) {
  // 24 padded sequences with 1 to 11 real tokens, micro-batches of 8, 3 per step: one step over every sequence.
  // The step must equal one SGD step on the token-mean cross-entropy over all 24 (the mean over every counted
  // token, as one big batch computes it), not the mean of the three micro-batches' token means.
  const auto data = kd::testing::padded_tokens(24, 12, 11, 3);
  torch::manual_seed(4);
  auto net = std::make_shared<kd::testing::TokenNetImpl>(11, 6);
  std::map<std::string, torch::Tensor> before, grads;
  for (auto& item : net->named_parameters()) before[item.key()] = item.value().detach().clone();
  torch::nn::functional::cross_entropy(net->forward(data.inputs).logits.reshape({-1, 11}), data.targets.reshape({-1}),
                                       torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100))
      .backward();
  for (auto& item : net->named_parameters()) grads[item.key()] = item.value().grad().detach().clone();
  for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
  // Sequences really hold different numbers of tokens (0 to 11 counted targets).
  const auto counted = (data.targets != -100).sum(1);
  ASSERT_EQ(counted.min().item<int64_t>(), 0);
  ASSERT_EQ(counted.max().item<int64_t>(), 11);

  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).lr(0.5)},
                      plain_sgd(8).accumulation(3));
  t.fit(data);
  for (auto& item : net->named_parameters()) {
    const auto& name = item.key();
    EXPECT_TRUE(torch::allclose(item.value(), before.at(name) - 0.5 * grads.at(name), 1e-5, 1e-7)) << name;
  }
}

struct EvalRecorder : kd::Callback {
  void on_step_end(const kd::StepReport&) override {
    std::vector<torch::Tensor> w;
    for (auto& p : net->parameters()) w.push_back(p.detach().clone());
    weights.push_back(w);
  }
  void on_eval(const kd::EvalResult& e) override { accuracy.push_back(e.metrics.at("accuracy")); }
  std::shared_ptr<MlpImpl> net;
  std::vector<std::vector<torch::Tensor>> weights;
  std::vector<double> accuracy;
};

TEST(StagedTrainerOptim, EmaFollowsTheRecurrenceOnlyInStagesThatEnableItAndEvaluatesOnIt) {
  const auto data = synthetic(64, 9);
  torch::manual_seed(10);
  auto net = std::make_shared<MlpImpl>();
  std::vector<torch::Tensor> shadow;
  for (auto& p : net->parameters()) shadow.push_back(p.detach().clone());
  const double decay = 0.8;
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.05),
                       kd::Stage("b", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.05).ema(false)},
                      kd::StagedTrainerOptions().batch_size(16).ema_decay(decay).eval_on_ema(true).num_classes(4));
  auto rec = std::make_shared<EvalRecorder>();
  rec->net = net;
  t.add_callback(rec);
  t.fit(data, &data);
  ASSERT_EQ(rec->weights.size(), 7u);
  // shadow ← decay·shadow + (1 − decay)·θ after each of stage a's 4 steps; stage b leaves it alone.
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < shadow.size(); ++i) shadow[i] = decay * shadow[i] + (1 - decay) * rec->weights[step][i];
  }
  auto check = std::make_shared<MlpImpl>();
  {
    torch::NoGradGuard g;
    auto p = check->parameters();
    for (size_t i = 0; i < p.size(); ++i) p[i].copy_(shadow[i]);
  }
  const double ema_accuracy =
      (check->forward(data.inputs).logits.argmax(1) == data.targets).to(torch::kDouble).mean().item<double>();
  ASSERT_EQ(rec->accuracy.size(), 2u);
  EXPECT_DOUBLE_EQ(rec->accuracy[0], ema_accuracy);  // evaluated on the EMA, not on the trained weights
  EXPECT_DOUBLE_EQ(rec->accuracy[1], ema_accuracy);  // stage b did not move the EMA
}

struct Rewriter : kd::StageHook {
  std::string name() const override { return "rewriter"; }
  bool rewrites_weights() const override { return true; }
};

TEST(StagedTrainerOptim, AWeightRewritingHookNeedsEmaOffInItsStage) {
  auto hook = std::make_shared<Rewriter>();
  auto make = [&](bool ema_in_stage) {
    kd::StagedTrainer(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                      {kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(1),
                       kd::Stage("b", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).hooks({hook}).ema(ema_in_stage)},
                      kd::StagedTrainerOptions().ema_decay(0.9));
  };
  EXPECT_THROW(make(true), kd::Error);
  EXPECT_NO_THROW(make(false));
}
