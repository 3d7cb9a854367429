// Magnitude pruning: which weights, channels and heads go (checked against sorting by hand), masks that
// only shrink, the cubic schedule, and inside StagedTrainer: pruned weights exactly zero after every
// optimizer step and after a resume (bit-identical to an uninterrupted run).
#include <algorithm>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/prune/pruning.h"
#include "kd/prune/pruning_hook.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::prune::Granularity;
using kd::testing::MlpImpl;
using kd::testing::synthetic;

struct TwoLayers : torch::nn::Module {
  TwoLayers() {
    fc = register_module("fc", torch::nn::Linear(6, 4));
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 5, 3)));
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::Conv2d conv{nullptr};
};

TEST(Pruning, UnstructuredZeroesTheSmallestMagnitudesOfEachLayer) {
  torch::manual_seed(0);
  auto m = std::make_shared<TwoLayers>();
  const auto fc_before = m->fc->weight.detach().clone();
  auto p = kd::prune::prepare(m);
  p->update(0.25);
  p->apply();
  // By hand: the 6 (= ⌊0.25 · 24⌋) smallest |w| of fc are zero, every other weight is untouched.
  auto sorted = std::get<0>(fc_before.abs().flatten().sort());
  const double threshold = sorted[5].item<double>();
  const auto w = m->fc->weight.detach();
  EXPECT_TRUE(torch::equal(w, torch::where(fc_before.abs() <= threshold, torch::zeros_like(w), fc_before)));
  EXPECT_EQ(m->conv->weight.eq(0).sum().item<int64_t>(), 22);  // ⌊0.25 · 90⌋
  EXPECT_NE(m->fc->bias.eq(0).sum().item<int64_t>(), 4);        // biases are not pruned
  // Masks only shrink: a lower target keeps what is pruned.
  p->update(0.1);
  p->apply();
  EXPECT_EQ(m->fc->weight.eq(0).sum().item<int64_t>(), 6);
  EXPECT_DOUBLE_EQ(p->target_sparsity(), 0.1);
  const auto r = p->report();
  EXPECT_EQ(r.parameters, 24 + 90);
  EXPECT_EQ(r.zero_parameters, 6 + 22);
}

TEST(Pruning, ChannelsGoByTheNormOfTheirWeightsAndBias) {
  torch::manual_seed(1);
  auto m = std::make_shared<TwoLayers>();
  const auto w = m->conv->weight.detach().clone(), b = m->conv->bias.detach().clone();
  auto p = kd::prune::prepare(m, kd::prune::Options().granularity(Granularity::kChannel).targets({"conv"}));
  p->update(0.4);  // ⌊0.4 · 5⌋ = 2 channels
  p->apply();
  const auto norms = w.pow(2).flatten(1).sum(1) + b.pow(2);
  const auto order = std::get<1>(norms.sort());
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t c = order[i].item<int64_t>();
    const bool pruned = i < 2;
    EXPECT_EQ(m->conv->weight[c].eq(0).all().item<bool>(), pruned) << c;
    EXPECT_EQ(m->conv->bias[c].item<float>() == 0.f, pruned) << c;
    if (!pruned) EXPECT_TRUE(torch::equal(m->conv->weight[c], w[c]));
  }
  EXPECT_FALSE(m->fc->weight.eq(0).any().item<bool>());  // not a target
  EXPECT_EQ(p->report().sites.at(0).pruned_units, 2);
}

TEST(Pruning, APrunedHeadAddsNothingToTheAttentionOutput) {
  torch::manual_seed(2);
  kd::models::MultiHeadSelfAttention attn(kd::models::MultiHeadSelfAttentionOptions(8, 4));
  // Make head 2 the weakest: its q/k/v rows and o_proj columns (rows/columns 4..5) shrink.
  {
    torch::NoGradGuard no_grad;
    for (auto* l : {&attn->q_proj, &attn->k_proj, &attn->v_proj}) (*l)->weight.slice(0, 4, 6).mul_(0.01);
    attn->o_proj->weight.slice(1, 4, 6).mul_(0.01);
  }
  // Independent reference: the same layer with only o_proj's columns of head 2 zeroed — head 2's
  // context then reaches nothing, whatever its q, k, v are.
  kd::models::MultiHeadSelfAttention ref(kd::models::MultiHeadSelfAttentionOptions(8, 4));
  {
    torch::NoGradGuard no_grad;
    auto src = attn->named_parameters();
    for (auto& q : ref->named_parameters()) q.value().copy_(src[q.key()]);
    ref->o_proj->weight.slice(1, 4, 6).zero_();
  }
  auto p = kd::prune::prepare(attn.ptr(), kd::prune::Options().granularity(Granularity::kHead));
  p->update(0.25);  // one head of four
  p->apply();
  EXPECT_TRUE(attn->q_proj->weight.slice(0, 4, 6).eq(0).all().item<bool>());
  EXPECT_TRUE(attn->v_proj->bias.slice(0, 4, 6).eq(0).all().item<bool>());
  EXPECT_TRUE(attn->o_proj->weight.slice(1, 4, 6).eq(0).all().item<bool>());
  EXPECT_FALSE(attn->q_proj->weight.slice(0, 0, 4).eq(0).any().item<bool>());
  const auto x = torch::randn({2, 5, 8});
  const auto rope = kd::models::rotary_tables(5, 2, 10000.0, x.options());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(attn->forward(x, rope).output, ref->forward(x, rope).output, 1e-5, 1e-6));
}

TEST(Pruning, CubicScheduleAndBadInputs) {
  EXPECT_DOUBLE_EQ(kd::prune::cubic_sparsity(0.0, 0.8, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(kd::prune::cubic_sparsity(0.0, 0.8, 1.0), 0.8);
  EXPECT_DOUBLE_EQ(kd::prune::cubic_sparsity(0.0, 0.8, 0.5), 0.8 - 0.8 * 0.125);
  auto m = std::make_shared<TwoLayers>();
  kd::testing::expect_kd_error([&] { kd::prune::prepare(m, kd::prune::Options().targets({"nope"})); },
                               kd::ErrorCategory::kConfig, {"no Linear/Conv layer matches targets [nope]", "fc, conv"});
  kd::testing::expect_kd_error([&] { kd::prune::prepare(m, kd::prune::Options().granularity(Granularity::kHead)); },
                               kd::ErrorCategory::kConfig, {"no attention module"});
  kd::testing::expect_kd_error([&] { kd::prune::prepare(m)->update(1.0); }, kd::ErrorCategory::kValue,
                               {"sparsity must be in [0, 1)"});
  kd::testing::expect_kd_error(
      [&] { kd::prune::Hook(kd::prune::prepare(m), kd::prune::HookOptions().schedule({0.0, 1.5})); },
      kd::ErrorCategory::kConfig, {"must be in [0, 1)"});
}

// The zero pattern of fc1 and the pruning mask of fc1 after every optimizer step.
struct Zeros : kd::Callback {
  Zeros(std::shared_ptr<MlpImpl> n, kd::prune::Pruning p) : net(std::move(n)), pruning(std::move(p)) {}
  void on_step_end(const kd::StepReport&) override {
    patterns.push_back(net->fc1->weight.eq(0).clone());
    pruned.push_back(pruning->named_buffers()["mask_fc1"].eq(0).clone());
  }
  std::shared_ptr<MlpImpl> net;
  kd::prune::Pruning pruning;
  std::vector<torch::Tensor> patterns, pruned;
};

std::pair<std::vector<kd::Stage>, std::shared_ptr<kd::prune::Hook>> pruned_stages(std::shared_ptr<MlpImpl> net) {
  auto hook = std::make_shared<kd::prune::Hook>(
      kd::prune::prepare(net, kd::prune::Options().exclude({"fc2"})),
      kd::prune::HookOptions().update_every(2).stages({{"prune", {0.0, 0.75}}, {"hold", {0.75, 0.75}}}));
  return {{kd::Stage("dense", torch::nn::AnyModule(kd::HardLabelCE())).steps(2).lr(0.05),
           kd::Stage("prune", torch::nn::AnyModule(kd::HardLabelCE())).steps(8).lr(0.05).hooks({hook}),
           kd::Stage("hold", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.05).hooks({hook})},
          hook};
}

TEST(PruningHook, PrunedWeightsStayZeroThroughOptimizerStepsAndTheSparsityGrows) {
  auto data = synthetic(64, 5);
  torch::manual_seed(3);
  auto net = std::make_shared<MlpImpl>();
  auto [stages, hook] = pruned_stages(net);
  auto zeros = std::make_shared<Zeros>(net, hook->pruning());
  kd::StagedTrainer trainer(kd::Student(net), std::nullopt, stages,
                            kd::StagedTrainerOptions().batch_size(16));  // AdamW: its moments would move zeros
  trainer.add_callback(zeros);
  trainer.fit(data);
  ASSERT_EQ(zeros->patterns.size(), 14u);
  EXPECT_EQ(zeros->patterns[1].sum().item<int64_t>(), 0);  // dense stage
  int64_t before = 0;
  for (size_t i = 2; i < 14; ++i) {
    // Right after the optimizer's step, every pruned weight is exactly zero (AdamW's moments from before
    // a weight was pruned would otherwise move it).
    EXPECT_TRUE(torch::equal(zeros->patterns[i].logical_and(zeros->pruned[i]), zeros->pruned[i])) << i;
    const int64_t now = zeros->patterns[i].sum().item<int64_t>();
    EXPECT_GE(now, before) << i;  // never fewer zeros: what was pruned stays exactly zero
    EXPECT_TRUE(torch::equal(zeros->patterns[i].logical_and(zeros->patterns[i - 1]), zeros->patterns[i - 1])) << i;
    before = now;
  }
  EXPECT_EQ(before, 96);  // ⌊0.75 · 128⌋ weights of fc1 (8 × 16) in the hold stage
  EXPECT_FALSE(net->fc2->weight.eq(0).any().item<bool>());
}

TEST(PruningHook, ResumedInsideThePruningStageIsBitIdentical) {
  auto data = synthetic(64, 6);
  auto options = [](const std::string& dir) {
    return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("p");
  };
  torch::manual_seed(9);
  auto straight = std::make_shared<MlpImpl>();
  auto [straight_stages, straight_hook] = pruned_stages(straight);
  kd::StagedTrainer(kd::Student(straight), std::nullopt, straight_stages, options(kd::testing::temp_dir("prune_a")))
      .fit(data);
  for (int64_t crash_after : {3, 6, 11}) {  // early in the pruning stage, mid-way, in the hold stage
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("prune_resume");
    torch::manual_seed(9);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer crashing(kd::Student(net), std::nullopt, pruned_stages(net).first, options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);
    torch::manual_seed(4321);
    auto resumed = std::make_shared<MlpImpl>();
    auto [stages, hook] = pruned_stages(resumed);
    EXPECT_TRUE(kd::StagedTrainer(kd::Student(resumed), std::nullopt, stages, options(dir)).fit(data, nullptr, true).resumed);
    auto a = straight->named_parameters(), b = resumed->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
    auto ma = straight_hook->pruning()->named_buffers(), mb = hook->pruning()->named_buffers();
    for (const auto& p : ma) EXPECT_TRUE(torch::equal(p.value(), mb[p.key()])) << p.key();
  }
}

}  // namespace
