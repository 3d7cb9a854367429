// StagedTrainer::check, and fit() running it first: a mistake in a late stage stops the run before the first
// step, names the stage, writes no file and leaves the random generators as they were.

#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;
using ::testing::HasSubstr;

struct StepCount : kd::Callback {
  void on_step_end(const kd::StepReport&) override { ++steps; }
  int steps = 0;
};

// Stage "a" trains on labels; stage "b" adds a feature term whose layers the options choose.
std::vector<kd::Stage> two_stages(int64_t teacher_layer, std::vector<std::string> b_trainable = {}) {
  return kd::build_stages(
      {kd::StageSpec("a").steps(3).lr(0.01).losses({kd::LossSpec("hard_label_ce").name("ce")}),
       kd::StageSpec("b").steps(3).lr(0.01).trainable(std::move(b_trainable)).losses(
           {kd::LossSpec("feature_l2").name("feat").set("teacher_layers", std::vector<double>{double(teacher_layer)})
                .set("student_layers", std::vector<double>{0}).set("student_dims", std::vector<double>{16})
                .set("teacher_dims", std::vector<double>{24}),
            kd::LossSpec("hard_label_ce").name("ce")})});
}

// Runs fit(), expects a kd::Error before any step and no checkpoint folder; returns the message.
std::string refused_before_training(std::vector<kd::Stage> stages, const kd::data::TensorDataset& train,
                                    const kd::data::TensorDataset* validation = nullptr) {
  torch::manual_seed(3);
  kd::Teacher teacher(std::make_shared<MlpImpl>(24));
  const auto dir = kd::testing::temp_dir("check") + "/checkpoints";
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher, std::move(stages),
                      kd::StagedTrainerOptions().batch_size(16).num_classes(4).checkpoint_dir(dir));
  auto count = std::make_shared<StepCount>();
  t.add_callback(count);
  std::string message;
  try {
    t.fit(train, validation);
    ADD_FAILURE() << "fit() trained although a stage cannot run";
  } catch (const kd::Error& e) {
    message = e.what();
  }
  EXPECT_EQ(count->steps, 0) << message;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "a refused run wrote its checkpoint folder";
  return message;
}

TEST(StagedTrainerCheck, ALayerIndexOutOfRangeInTheLastStageStopsBeforeTheFirstStep) {
  // MlpImpl has one hidden state: teacher layer 7 exists nowhere.
  const auto message = refused_before_training(two_stages(7), synthetic(64, 1));
  EXPECT_THAT(message, HasSubstr("stage 2/2 'b' (checked on the first training examples, before training)"));
  EXPECT_THAT(message, HasSubstr("loss 'feat'"));
  EXPECT_THAT(message, HasSubstr("7"));
}

TEST(StagedTrainerCheck, AnInputGradientLossWithoutALiveTeacherIsRefusedByName) {
  // R1 differentiates the teacher with respect to its inputs: with the student's EMA as the teacher there is no
  // teacher model to differentiate (this used to dereference a missing teacher).
  const auto data = synthetic(64, 1);
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                      kd::build_stages({kd::StageSpec("r1").steps(2).losses({kd::LossSpec("gradient_matching")})}),
                      kd::StagedTrainerOptions().batch_size(16).ema_decay(0.9).self_distillation(true));
  try {
    t.check(data);
    ADD_FAILURE() << "check() accepted R1 with self-distillation";
  } catch (const kd::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("stage 1/1 'r1'"));
    EXPECT_THAT(e.what(), HasSubstr("needs input gradients of the teacher (R1), so it needs a live teacher"));
  }
}

TEST(StagedTrainerCheck, ATrainablePatternThatMatchesNothingStopsBeforeTheFirstStep) {
  const auto message = refused_before_training(two_stages(0, {"^decoder\\."}), synthetic(64, 1));
  EXPECT_THAT(message, HasSubstr("stage 'b': no student parameter matches the trainable patterns"));
}

TEST(StagedTrainerCheck, LabelsOutOfRangeInAnySplitStopBeforeTheFirstStep) {
  auto train = synthetic(64, 1);
  auto validation = synthetic(32, 2);
  validation.targets = validation.targets.clone();
  validation.targets[9] = 12;
  EXPECT_THAT(refused_before_training(two_stages(0), train, &validation),
              HasSubstr("validation set: example 9 has class 12, outside [0, 4) of the student's 4 logits (1 such"));
  train.targets = train.targets.clone();
  train.targets[20] = -3;
  EXPECT_THAT(refused_before_training(two_stages(0), train),
              HasSubstr("training set: example 20 has class -3, outside [0, 4)"));
  train.targets[20] = -100;  // ignore_index: not a class, not an error
  torch::manual_seed(3);
  kd::Teacher teacher(std::make_shared<MlpImpl>(24));
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher, two_stages(0),
                      kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  EXPECT_NO_THROW(t.check(train));
}

TEST(StagedTrainerCheck, CheckingChangesNeitherTheRandomStreamNorTheModels) {
  const auto data = synthetic(64, 1);
  torch::manual_seed(3);
  kd::Teacher teacher(std::make_shared<MlpImpl>(24));
  auto net = std::make_shared<MlpImpl>();
  std::vector<torch::Tensor> before;
  for (auto& p : net->parameters()) before.push_back(p.detach().clone());
  net->fc2->weight.requires_grad_(false);
  kd::StagedTrainer t(kd::Student(net), teacher, two_stages(0), kd::StagedTrainerOptions().batch_size(16));
  net->train();
  torch::manual_seed(42);
  t.check(data);
  const auto drawn = torch::rand({4});
  torch::manual_seed(42);
  EXPECT_TRUE(torch::equal(drawn, torch::rand({4})));
  EXPECT_TRUE(net->is_training());
  EXPECT_FALSE(net->fc2->weight.requires_grad());
  auto params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i], before[i]));
}

}  // namespace

namespace {

// Counts the calls StagedTrainer::check makes (StepInfo::sanity_check) apart from the training ones.
struct CallCounterImpl : torch::nn::Cloneable<CallCounterImpl> {
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    (b.step.sanity_check ? sanity : training) += 1;
    if (b.step.sanity_check) rows = b.inputs.size(0);
    return ce->forward(b);
  }
  kd::HardLabelCE ce;
  int sanity = 0, training = 0;
  int64_t rows = 0;
};
TORCH_MODULE(CallCounter);

TEST(StagedTrainerCheck, EachStagesLossIsCalledOnceOnTwoExamplesMarkedAsASanityCheck) {
  CallCounter a, b;
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                      {kd::Stage("a", torch::nn::AnyModule(a)).steps(3), kd::Stage("b", torch::nn::AnyModule(b)).steps(2)},
                      kd::StagedTrainerOptions().batch_size(16));
  t.fit(synthetic(64, 1));
  EXPECT_EQ(a->sanity, 1);
  EXPECT_EQ(b->sanity, 1);
  EXPECT_EQ(a->rows, 2);
  EXPECT_EQ(a->training, 3);
  EXPECT_EQ(b->training, 2);
}

}  // namespace
