// Resume is exact, option by option: a run killed after step k and resumed from its newest checkpoint in a
// fresh process (other weights, other RNG state) ends with the same weights, bit for bit, as a run that
// was never interrupted.

#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/train/staged_trainer.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;

// Gaussian noise from the global generator on every micro-batch: resume must restore the RNG.
struct NoiseAugmentation : kd::data::Augmentation {
  std::string name() const override { return "noise"; }
  void apply(torch::Tensor& inputs, torch::Tensor&) override { inputs = inputs + 0.1 * torch::randn_like(inputs); }
};

struct ResumeCase {
  std::string name;
  std::function<void(kd::StagedTrainerOptions&)> set;
  bool teacher = true;  // false: the stages' KL reads the student's own EMA (self-distillation)
};

std::ostream& operator<<(std::ostream& os, const ResumeCase& c) { return os << c.name; }

class ResumeIsBitIdentical : public ::testing::TestWithParam<ResumeCase> {};

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

TEST_P(ResumeIsBitIdentical, ForEveryCrashPoint) {
  const ResumeCase& c = GetParam();
  auto data = kd::testing::synthetic(80, 4);  // 5 micro-batches of 16 per epoch
  auto make_stages = [] {
    return std::vector<kd::Stage>{
        kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(5).lr(0.03).trainable({"fc2"}),
        kd::Stage("b", torch::nn::AnyModule(kd::TemperatureKL())).steps(9).lr(0.03)};
  };
  auto options = [&](const std::string& dir) {
    auto o = kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("cfg")
                 .warmup_steps(2).seed(3);
    c.set(o);
    return o;
  };
  torch::manual_seed(11);
  std::optional<kd::Teacher> teacher;
  if (c.teacher) teacher = kd::Teacher(std::make_shared<MlpImpl>(24));

  torch::manual_seed(7);
  auto straight_net = std::make_shared<MlpImpl>();
  torch::manual_seed(100);
  kd::StagedTrainer(kd::Student(straight_net), teacher, make_stages(), options(kd::testing::temp_dir("straight")))
      .fit(data);

  // Inside stage a's first epoch, at the stage boundary, inside stage b's first and second epochs.
  for (int64_t crash_after : {3, 5, 8, 12}) {
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("resume");
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    torch::manual_seed(100);
    kd::StagedTrainer crashing(kd::Student(net), teacher, make_stages(), options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);

    torch::manual_seed(12345);  // a new process: other weights, other RNG
    auto resumed_net = std::make_shared<MlpImpl>();
    kd::StagedTrainer resumed(kd::Student(resumed_net), teacher, make_stages(), options(dir));
    auto summary = resumed.fit(data, nullptr, /*resume=*/true);
    EXPECT_TRUE(summary.resumed);
    EXPECT_EQ(summary.resumed_from_step, crash_after - 1);
    EXPECT_EQ(summary.steps, 14);
    auto a = snapshot(*straight_net), b = snapshot(*resumed_net);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    TrainerOptions, ResumeIsBitIdentical,
    ::testing::Values(
        ResumeCase{"defaults", [](kd::StagedTrainerOptions&) {}},
        ResumeCase{"accumulation", [](kd::StagedTrainerOptions& o) { o.batch_size(8).accumulation(2); }},
        ResumeCase{"sgd_nesterov", [](kd::StagedTrainerOptions& o) {
                     o.optimizer(kd::OptimizerKind::kSgd).nesterov(true).momentum(0.9);
                   }},
        ResumeCase{"ema", [](kd::StagedTrainerOptions& o) { o.ema_decay(0.9); }},
        ResumeCase{"self_distillation", [](kd::StagedTrainerOptions& o) { o.ema_decay(0.9).self_distillation(true); },
                   /*teacher=*/false},
        ResumeCase{"hard_examples_by_teacher_entropy", [](kd::StagedTrainerOptions& o) { o.hard_example_mix(0.5); }},
        ResumeCase{"hard_examples_by_disagreement", [](kd::StagedTrainerOptions& o) {
                     o.hard_example_mix(0.5).hardness(kd::Hardness::kDisagreement);
                   }},
        ResumeCase{"stochastic_augmentation",
                   [](kd::StagedTrainerOptions& o) { o.augmentation(std::make_shared<NoiseAugmentation>()); }},
        ResumeCase{"adversarial_examples",
                   [](kd::StagedTrainerOptions& o) { o.adversarial(kd::AdversarialOptions().epsilon(0.05)); }},
        ResumeCase{"lower_lr_policy_and_clipping", [](kd::StagedTrainerOptions& o) {
                     o.nonfinite(kd::NonFinitePolicy::kLowerLr).clip_norm(0.5).min_lr_factor(0.1);
                   }}),
    [](const ::testing::TestParamInfo<ResumeCase>& info) { return info.param.name; });

}  // namespace
