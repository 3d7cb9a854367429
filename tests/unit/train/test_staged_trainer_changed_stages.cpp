// Resuming under a changed definition of the stages (StagedTrainerOptions::stage_fingerprints): stages the
// checkpoint has not begun may change or be added, and the resumed run then ends with the weights a run that
// used the new definitions from the start would have, bit for bit; a finished stage, or the one a checkpoint
// is part-way through, may not change, and the refusal says which stage, where its start is, and leaves the
// student as it was.

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/train/staged_trainer.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using ::testing::HasSubstr;

// Stage a: 5 steps of CE on fc2; stage b: 9 steps of KL at `b_lr`; stage c (when `with_c`): 4 steps of CE.
std::vector<kd::Stage> make_stages(double b_lr, bool with_c = false, double a_lr = 0.03) {
  std::vector<kd::Stage> stages{
      kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(5).lr(a_lr).trainable({"fc2"}),
      kd::Stage("b", torch::nn::AnyModule(kd::TemperatureKL())).steps(9).lr(b_lr)};
  if (with_c) stages.push_back(kd::Stage("c", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.01));
  return stages;
}

kd::StagedTrainerOptions options(const std::string& dir, std::vector<std::string> stage_fingerprints,
                                 const std::string& fingerprint = "outside") {
  return kd::StagedTrainerOptions()
      .batch_size(16)
      .checkpoint_dir(dir)
      .checkpoint_every(1)
      .fingerprint(fingerprint)
      .stage_fingerprints(std::move(stage_fingerprints))
      .seed(3);
}

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

void expect_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
}

class ChangedStages : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = kd::testing::synthetic(80, 4);
    torch::manual_seed(11);
    teacher_ = kd::Teacher(std::make_shared<MlpImpl>(24));
  }

  // A run with the old stage b (lr 0.03) that crashed in step `crash_after` (0: finished); its checkpoint folder.
  std::string crashed_run(int64_t crash_after, int64_t keep_last = 3) {
    const auto dir = kd::testing::temp_dir("changed_stages");
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer crashing(kd::Student(net), teacher_, make_stages(0.03),
                               options(dir, {"a1", "b1"}).keep_last(keep_last));
    if (crash_after == 0) {
      crashing.fit(data_);
      return dir;
    }
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data_), std::runtime_error);
    return dir;
  }

  // The weights of a run that used `stages` from the start.
  std::vector<torch::Tensor> straight(std::vector<kd::Stage> stages, std::vector<std::string> fingerprints) {
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer(kd::Student(net), teacher_, std::move(stages),
                      options(kd::testing::temp_dir("changed_straight"), std::move(fingerprints)))
        .fit(data_);
    return snapshot(*net);
  }

  // A resume of `dir` under `stages`; the refusal's message, or "" when it trained (weights in `weights`).
  std::string resume(const std::string& dir, std::vector<kd::Stage> stages, std::vector<std::string> fingerprints,
                     std::vector<torch::Tensor>* weights = nullptr, const std::string& fingerprint = "outside") {
    torch::manual_seed(12345);  // a new process
    auto net = std::make_shared<MlpImpl>();
    const auto before = snapshot(*net);
    kd::StagedTrainer trainer(kd::Student(net), teacher_, std::move(stages),
                              options(dir, std::move(fingerprints), fingerprint));
    try {
      trainer.fit(data_, nullptr, /*resume=*/true);
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig) << e.what();
      expect_equal(snapshot(*net), before);  // a refused resume restores nothing
      return e.what();
    }
    if (weights) *weights = snapshot(*net);
    return "";
  }

  kd::data::TensorDataset data_;
  std::optional<kd::Teacher> teacher_;
};

TEST_F(ChangedStages, AStageNotYetBegunMayChange) {
  // Crashed in step 6: the newest checkpoint is stage a's end (step 5), stage b has not begun.
  const auto dir = crashed_run(6);
  std::vector<torch::Tensor> resumed;
  EXPECT_EQ(resume(dir, make_stages(0.01), {"a1", "b2"}, &resumed), "");
  expect_equal(resumed, straight(make_stages(0.01), {"a1", "b2"}));
}

TEST_F(ChangedStages, AStageMayBeAddedToAFinishedRun) {
  const auto dir = crashed_run(/*finished*/ 0);
  std::vector<torch::Tensor> resumed;
  EXPECT_EQ(resume(dir, make_stages(0.03, /*with_c=*/true), {"a1", "b1", "c1"}, &resumed), "");
  expect_equal(resumed, straight(make_stages(0.03, true), {"a1", "b1", "c1"}));
}

TEST_F(ChangedStages, TheStageACheckpointIsPartWayThroughMayNotChange) {
  // Crashed in step 9: the newest checkpoint is step 8, 3 steps into stage b; b's start (step 5) is kept.
  const auto dir = crashed_run(9, /*keep_last=*/4);
  const auto message = resume(dir, make_stages(0.01), {"a1", "b2"});
  EXPECT_THAT(message, HasSubstr("stage 2/2 'b' changed since checkpoint"));
  EXPECT_THAT(message, HasSubstr("ckpt-0000000008-"));
  EXPECT_THAT(message, HasSubstr("written 3 steps into it"));
  EXPECT_THAT(message, HasSubstr("the stage's start is checkpoint '"));
  EXPECT_THAT(message, HasSubstr("ckpt-0000000005-"));

  // With fewer checkpoints kept the start is gone, and the message says so.
  const auto short_dir = crashed_run(9, /*keep_last=*/2);
  EXPECT_THAT(resume(short_dir, make_stages(0.01), {"a1", "b2"}),
              HasSubstr("no checkpoint of the stage's start is kept (keep_last 3)"));
}

TEST_F(ChangedStages, AFinishedStageMayNotChange) {
  const auto dir = crashed_run(9);
  const auto message = resume(dir, make_stages(0.03, false, /*a_lr=*/0.02), {"a2", "b1"});
  EXPECT_THAT(message, HasSubstr("stage 1/2 'a' changed since checkpoint"));
  EXPECT_THAT(message, HasSubstr("has finished it"));
}

TEST_F(ChangedStages, SettingsOutsideTheStagesMayNotChange) {
  const auto dir = crashed_run(6);
  EXPECT_THAT(resume(dir, make_stages(0.03), {"a1", "b1"}, nullptr, "other"),
              HasSubstr("different configuration (outside the stages)"));
  // Fewer stages than the checkpoint has begun.
  EXPECT_THAT(resume(crashed_run(9), {make_stages(0.03)[0]}, {"a1"}), HasSubstr("but the config has 1 stages"));
}

}  // namespace
