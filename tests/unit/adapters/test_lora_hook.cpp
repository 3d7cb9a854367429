// LoRA inside kd::StagedTrainer: what trains in a LoRA stage, merging at its end, exact resume
// inside it and after it (attached adapters with dropout on kd::nn::Linear, and re-parametrised
// plain torch::nn::Linear), a model that bypasses its kd::nn::Linear's forward, and the
// stage/hook combinations the trainer refuses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::synthetic;
using kd::testing::MlpImpl;
using ::testing::HasSubstr;

// The fixture's MLP with plain torch::nn::Linear layers: LoRA re-parametrises their weights.
struct PlainMlpImpl : kd::Model {
  PlainMlpImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.hidden_states.push_back(torch::tanh(fc1->forward(x)));
    out.logits = fc2->forward(out.hidden_states.back());
    return out;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// Holds a kd::nn::Linear in a torch::nn::Linear member (the base class's forward runs), then a head.
struct HiddenKdLinearImpl : kd::Model {
  HiddenKdLinearImpl() {
    std::shared_ptr<torch::nn::LinearImpl> layer = register_module("fc", kd::nn::Linear(8, 4));
    fc = torch::nn::Linear(layer);
    head = register_module("head", torch::nn::Linear(4, 4));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = head->forward(torch::tanh(fc->forward(x)));
    return out;
  }
  torch::nn::Linear fc{nullptr}, head{nullptr};
};

std::map<std::string, torch::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

TEST(LoRAHook, StageTrainsOnlyAdaptersThenMergesIntoAnOrdinaryModel) {
  auto data = synthetic(64, 1);
  torch::manual_seed(0);
  auto tnet = std::make_shared<MlpImpl>(32);
  auto snet = std::make_shared<MlpImpl>();
  kd::Teacher teacher(tnet);
  auto lora = kd::lora::apply(snet, kd::lora::Options().rank(2).alpha(4).targets({"fc1"}));
  auto hook = std::make_shared<kd::lora::Hook>(lora);

  // Stage 1 alone first (everything trains), to know the weights the LoRA stage starts from.
  kd::StagedTrainer(kd::Student(snet), teacher, {kd::Stage("warm", torch::nn::AnyModule(kd::TemperatureKL())).steps(2).lr(0.05)},
                    kd::StagedTrainerOptions().batch_size(16))
      .fit(data);
  auto before = snapshot(*snet);
  kd::StagedTrainer trainer(kd::Student(snet), teacher,
                            {kd::Stage("lora", torch::nn::AnyModule(kd::TemperatureKL())).steps(4).lr(0.05).hooks({hook})},
                            kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  trainer.fit(data, &data);

  // fc2 and the biases never trained; fc1's weight changed only by the merge, by exactly s·B·A.
  auto after = snapshot(*snet);
  EXPECT_TRUE(torch::equal(after["fc2.weight"], before["fc2.weight"]));
  EXPECT_TRUE(torch::equal(after["fc2.bias"], before["fc2.bias"]));
  EXPECT_TRUE(torch::equal(after["fc1.bias"], before["fc1.bias"]));
  ASSERT_TRUE(lora->merged());
  auto a = lora->named_parameters()["fc1.lora_A"], b = lora->named_parameters()["fc1.lora_B"];
  EXPECT_GT(b.abs().max().item<float>(), 0.f);  // the adapters did train
  const auto expected = before["fc1.weight"] + torch::mm(b, a) * lora->scale();
  EXPECT_LT((after["fc1.weight"] - expected).abs().max().item<float>(), 1e-6f);
  EXPECT_TRUE(snet->fc1->weight.is_same(snet->named_parameters()["fc1.weight"]));
}

TEST(LoRAHook, HeadNamedByTrainableKeepsTrainingAlongsideTheAdapters) {
  auto data = synthetic(64, 2);
  torch::manual_seed(0);
  auto snet = std::make_shared<MlpImpl>();
  auto lora = kd::lora::apply(snet, kd::lora::Options().rank(2).targets({"fc1"}));
  auto before = snapshot(*snet);
  kd::StagedTrainer(kd::Student(snet), std::nullopt,
                    {kd::Stage("lora", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.05).trainable({"fc"}).hooks(
                        {std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().merge_at_end(false))})},
                    kd::StagedTrainerOptions().batch_size(16))
      .fit(data);
  auto after = snapshot(*snet);
  EXPECT_FALSE(torch::equal(after["fc2.weight"], before["fc2.weight"]));  // named by trainable
  EXPECT_TRUE(torch::equal(after["fc1.weight"], before["fc1.weight"]));   // an adapted layer's W0 stays frozen
  EXPECT_TRUE(torch::equal(after["fc1.bias"], before["fc1.bias"]));
  EXPECT_FALSE(lora->merged());
}

// Stage a (3 steps, no hook), b (6 steps, LoRA, merged at its end), c (3 steps, no hook); crashed at
// the boundary into b, inside b and inside c (after the merge), then resumed by a new process.
template <typename Net>
void check_exact_resume(double dropout) {
  auto data = synthetic(80, 4);
  torch::manual_seed(11);
  kd::Teacher teacher(std::make_shared<MlpImpl>(24));
  const auto adapter_dir = kd::testing::temp_dir("lora_adapter");
  auto stages = [&](std::shared_ptr<Net> net) {
    auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).dropout(dropout).targets({"fc1", "fc2"}));
    auto hook = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().save_adapter_to(adapter_dir + "/a.pt"));
    return std::make_pair(
        std::vector<kd::Stage>{kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.03),
                               kd::Stage("b", torch::nn::AnyModule(kd::TemperatureKL())).steps(6).lr(0.03).hooks({hook}),
                               kd::Stage("c", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.03)},
        lora);
  };
  auto options = [](const std::string& dir) {
    return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("cfg");
  };
  torch::manual_seed(7);
  auto straight_net = std::make_shared<Net>();
  auto [straight_stages, straight_lora] = stages(straight_net);
  kd::StagedTrainer(kd::Student(straight_net), teacher, straight_stages, options(kd::testing::temp_dir("straight"))).fit(data);
  ASSERT_TRUE(straight_lora->merged());

  for (int64_t crash_after : {3, 6, 11}) {  // at the boundary into the LoRA stage, inside it, after its merge
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("resume");
    torch::manual_seed(7);
    auto net = std::make_shared<Net>();
    kd::StagedTrainer crashing(kd::Student(net), teacher, stages(net).first, options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);

    torch::manual_seed(12345);  // a new process: other weights, other adapters, other RNG
    auto resumed_net = std::make_shared<Net>();
    auto [resumed_stages, resumed_lora] = stages(resumed_net);
    EXPECT_TRUE(kd::StagedTrainer(kd::Student(resumed_net), teacher, resumed_stages, options(dir))
                    .fit(data, nullptr, /*resume=*/true)
                    .resumed);
    EXPECT_TRUE(resumed_lora->merged());
    auto a = snapshot(*straight_net), b = snapshot(*resumed_net);
    for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b[name])) << name;
    auto la = snapshot(*straight_lora), lb = snapshot(*resumed_lora);
    for (const auto& [name, t] : la) EXPECT_TRUE(torch::equal(t, lb[name])) << name;
    // The same function too (a merged attached adapter must not add its update a second time).
    torch::NoGradGuard ng;
    straight_net->eval();
    resumed_net->eval();
    EXPECT_TRUE(torch::equal(straight_net->forward(data.inputs).logits, resumed_net->forward(data.inputs).logits));
    straight_net->train();
  }
  // The adapter file from the stage's end loads into a fresh LoRA.
  auto fresh = kd::lora::apply(std::make_shared<Net>(), kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
  fresh->load_adapter(adapter_dir + "/a.pt");
  EXPECT_TRUE(torch::equal(fresh->named_parameters()["fc2.lora_B"], straight_lora->named_parameters()["fc2.lora_B"]));
}

TEST(LoRAHook, ResumedInsideAndAfterTheLoRAStageIsBitIdenticalWithDropoutOnKdLinear) {
  check_exact_resume<MlpImpl>(/*dropout=*/0.2);
}

TEST(LoRAHook, ResumedInsideAndAfterTheLoRAStageIsBitIdenticalOnPlainLinear) {
  check_exact_resume<PlainMlpImpl>(/*dropout=*/0.0);
}

TEST(LoRAHook, DropoutChangesTrainingButNotEvaluation) {
  // The same run with and without dropout: the adapters train differently, an eval forward has no dropout.
  auto data = synthetic(64, 3);
  auto run = [&](double dropout) {
    torch::manual_seed(3);
    auto net = std::make_shared<MlpImpl>();
    auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).dropout(dropout).targets({"fc1"}));
    kd::StagedTrainer(kd::Student(net), std::nullopt,
                      {kd::Stage("lora", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.05).hooks(
                          {std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().merge_at_end(false))})},
                      kd::StagedTrainerOptions().batch_size(16))
        .fit(data);
    return std::make_pair(net, lora);
  };
  auto [plain_net, plain_lora] = run(0.0);
  auto [drop_net, drop_lora] = run(0.5);
  EXPECT_FALSE(torch::equal(plain_lora->named_parameters()["fc1.lora_B"], drop_lora->named_parameters()["fc1.lora_B"]));
  torch::NoGradGuard ng;
  drop_net->eval();
  const auto x = data.inputs.slice(0, 0, 8);
  EXPECT_TRUE(torch::equal(drop_net->forward(x).logits, drop_net->forward(x).logits));  // deterministic in eval
}

TEST(LoRAHook, AKdLinearCalledThroughTheBaseClassIsAnError) {
  auto data = synthetic(64, 5);
  auto net = std::make_shared<HiddenKdLinearImpl>();
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc"}));
  ASSERT_EQ(lora->attached_targets(), std::vector<std::string>{"fc"});  // a kd::nn::Linear, but...
  // The head trains too, so the first step's backward works; the second step's forward is refused.
  // (Were the adapters all that trains, LibTorch's backward would fail first: nothing requires grad.)
  kd::StagedTrainer trainer(kd::Student(net), std::nullopt,
                            {kd::Stage("lora", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.05).trainable(
                                {"head\\."}).hooks({std::make_shared<kd::lora::Hook>(lora)})},
                            kd::StagedTrainerOptions().batch_size(16));
  try {
    trainer.fit(data);
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kModel);
    EXPECT_THAT(e.what(), HasSubstr("never ran kd::nn::Linear::forward of [fc]"));
    EXPECT_THAT(e.what(), HasSubstr("declare those members as kd::nn::Linear"));
  }
}

TEST(LoRAHook, TrainerRefusesHookCombinationsThatCannotWork) {
  auto net = std::make_shared<MlpImpl>();
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc1"}));
  auto merged = std::make_shared<kd::lora::Hook>(lora);
  auto unmerged = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().merge_at_end(false));
  auto stage = [](const std::string& name, std::vector<std::shared_ptr<kd::StageHook>> hooks) {
    return kd::Stage(name, torch::nn::AnyModule(kd::HardLabelCE())).steps(1).hooks(std::move(hooks));
  };
  auto error = [&](std::vector<kd::Stage> stages, kd::StagedTrainerOptions o = {}) {
    try {
      kd::StagedTrainer(kd::Student(net), std::nullopt, std::move(stages), o);
    } catch (const kd::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error({stage("s", {merged, unmerged})}), HasSubstr("stage 's' enables both 'lora' and 'lora'"));
  EXPECT_THAT(error({stage("s3", {unmerged}), stage("s4", {})}),
              HasSubstr("stage 's4' does not enable 'lora', but an earlier stage did"));
  EXPECT_EQ(error({stage("s3", {merged}), stage("s4", {})}), "no error");  // merged: an ordinary model afterwards
  EXPECT_THAT(error({stage("s", {merged})}, kd::StagedTrainerOptions().ema_decay(0.9)), HasSubstr("set ema_decay 0"));
}

}  // namespace
