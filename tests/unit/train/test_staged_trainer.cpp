#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/train/staged_trainer.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::synthetic;
using kd::testing::MlpImpl;

struct Recorder : kd::Callback {
  void on_stage_begin(const kd::Stage& s, const kd::StepInfo&) override { begins.push_back(s.name()); }
  void on_step_end(const kd::StepReport& r) override {
    steps.push_back(r.step.global_step);
    progress.push_back(r.step.progress);
    losses.push_back(r.loss.total.item<double>());
    parts.push_back(r.loss.parts);
  }
  void on_eval(const kd::EvalResult& e) override { evals.push_back(e); }
  std::vector<std::string> begins;
  std::vector<int64_t> steps;
  std::vector<double> progress, losses;
  std::vector<std::map<std::string, torch::Tensor>> parts;
  std::vector<kd::EvalResult> evals;
};

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

TEST(StagedTrainer, StagesSwitchLossAndTrainableSetAtTheConfiguredSteps) {
  auto data = synthetic(64, 1);
  torch::manual_seed(0);
  auto tnet = std::make_shared<MlpImpl>(32);
  auto snet = std::make_shared<MlpImpl>();
  kd::Teacher teacher(tnet);
  kd::Student student(snet);
  std::vector<kd::Stage> stages = {
      kd::Stage("head-only", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.05).trainable({"fc2"}),
      kd::Stage("kl", torch::nn::AnyModule(kd::TemperatureKL())).steps(2).lr(0.05),
  };
  kd::StagedTrainer trainer(student, teacher, stages,
                            kd::StagedTrainerOptions().batch_size(16).num_classes(4).clip_norm(0));
  auto rec = std::make_shared<Recorder>();
  trainer.add_callback(rec);
  const auto fc1_before = snet->fc1->weight.detach().clone();
  const auto fc2_before = snet->fc2->weight.detach().clone();

  // Stop after stage 1 to look at the weights: run stage 1 alone through a second trainer.
  kd::StagedTrainer first(student, teacher, {stages[0]}, kd::StagedTrainerOptions().batch_size(16).clip_norm(0));
  first.fit(data);
  EXPECT_TRUE(torch::equal(snet->fc1->weight, fc1_before));   // frozen in stage 1
  EXPECT_FALSE(torch::equal(snet->fc2->weight, fc2_before));  // trained in stage 1

  auto summary = trainer.fit(data, &data);
  EXPECT_EQ(summary.steps, 5);
  EXPECT_EQ(rec->begins, (std::vector<std::string>{"head-only", "kl"}));
  EXPECT_EQ(rec->steps, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rec->parts[i].count("ce"), 1u);
  for (int i = 3; i < 5; ++i) EXPECT_EQ(rec->parts[i].count("kl"), 1u);
  EXPECT_DOUBLE_EQ(rec->progress[1], 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(rec->progress[4], 0.5);
  ASSERT_EQ(rec->evals.size(), 2u);  // end of each stage
  {
    torch::NoGradGuard g;  // the accuracy reported is the student's, counted here
    const auto pred = snet->forward(data.inputs).logits.argmax(1);
    EXPECT_DOUBLE_EQ(rec->evals[1].metrics.at("accuracy"), (pred == data.targets).to(torch::kDouble).mean().item<double>());
  }
  EXPECT_EQ(rec->evals[1].metrics.count("f1.3"), 1u);
  // fc1 was frozen in stage 1 only: stage 2 trained it again.
  EXPECT_FALSE(torch::equal(snet->fc1->weight, fc1_before));
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(StagedTrainer, LossFallsOverEpochs) {
  auto data = synthetic(256, 2);
  torch::manual_seed(0);
  kd::Student student(std::make_shared<MlpImpl>());
  kd::StagedTrainer trainer(student, std::nullopt, {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).epochs(8).lr(0.02)},
                            kd::StagedTrainerOptions().batch_size(32).warmup_steps(4).min_lr_factor(0.1));
  auto rec = std::make_shared<Recorder>();
  trainer.add_callback(rec);
  trainer.fit(data);
  ASSERT_EQ(rec->losses.size(), 64u);
  const double first = (rec->losses[0] + rec->losses[1] + rec->losses[2]) / 3;
  const double last = (rec->losses[61] + rec->losses[62] + rec->losses[63]) / 3;
  EXPECT_LT(last, 0.5 * first);
}

// Records the dtypes the loss sees, then defers to cross-entropy.
struct DtypeProbeImpl : torch::nn::Module {
  kd::LossResult forward(const kd::DistillBatch& b) {
    if (b.step.sanity_check) return ce->forward(b);  // StagedTrainer::check's call, outside autocast
    student_dtypes.push_back(b.student.logits.scalar_type());
    teacher_dtypes.push_back(b.teacher.logits.scalar_type());
    return ce->forward(b);
  }
  kd::HardLabelCE ce;
  std::vector<torch::ScalarType> student_dtypes, teacher_dtypes;
};
TORCH_MODULE(DtypeProbe);

TEST(StagedTrainer, Bf16AutocastRunsForwardsInBf16WithFloat32MasterWeights) {
  auto data = synthetic(256, 2);
  torch::manual_seed(0);
  auto snet = std::make_shared<MlpImpl>();
  kd::Teacher teacher(std::make_shared<MlpImpl>(32));
  DtypeProbe probe;
  kd::StagedTrainer trainer(kd::Student(snet), teacher, {kd::Stage("ce", torch::nn::AnyModule(probe)).epochs(8).lr(0.02)},
                            kd::StagedTrainerOptions().batch_size(32).precision(kd::Precision::kBFloat16));
  auto rec = std::make_shared<Recorder>();
  trainer.add_callback(rec);
  trainer.fit(data);
  ASSERT_EQ(probe->student_dtypes.size(), 64u);
  for (auto t : probe->student_dtypes) EXPECT_EQ(t, torch::kBFloat16);  // Linear ran in bf16
  for (auto t : probe->teacher_dtypes) EXPECT_EQ(t, torch::kBFloat16);
  for (const auto& p : snet->parameters()) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32);  // master weights
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
  }
  const double first = (rec->losses[0] + rec->losses[1] + rec->losses[2]) / 3;
  const double last = (rec->losses[61] + rec->losses[62] + rec->losses[63]) / 3;
  EXPECT_LT(last, 0.5 * first);
  // The guard restored the previous state: outside fit() a Linear is float32 again.
  EXPECT_EQ(snet->forward(torch::randn({2, 8})).logits.scalar_type(), torch::kFloat32);
  // Without the option nothing changes.
  DtypeProbe fp32;
  kd::StagedTrainer(kd::Student(snet), teacher, {kd::Stage("ce", torch::nn::AnyModule(fp32)).steps(2)},
                    kd::StagedTrainerOptions().batch_size(32))
      .fit(data);
  EXPECT_EQ(fp32->student_dtypes.at(0), torch::kFloat32);
}

TEST(StagedTrainer, AccumulatedMicroBatchesEqualOneBigBatch) {
  auto data = synthetic(96, 3);
  auto run = [&](int64_t batch, int64_t accumulation) {
    torch::manual_seed(5);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer t(kd::Student(net), std::nullopt,
                        {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(6).lr(0.1)},
                        kd::StagedTrainerOptions().optimizer(kd::OptimizerKind::kSgd).momentum(0).weight_decay(0)
                            .clip_norm(0).batch_size(batch).accumulation(accumulation));
    t.fit(data);
    return snapshot(*net);
  };
  // 96 examples: one step = 32 examples either way; 4 micro-batches of 8 = 32.
  auto big = run(32, 1), small = run(8, 4);
  for (size_t i = 0; i < big.size(); ++i) EXPECT_LT((big[i] - small[i]).abs().max().item<double>(), 1e-6);
}

// Resume, option by option: test_staged_trainer_resume.cpp.

TEST(StagedTrainer, BadStagesAreRejected) {
  kd::Student student(std::make_shared<MlpImpl>());
  EXPECT_THROW(kd::StagedTrainer(student, std::nullopt, {}), kd::Error);
  EXPECT_THROW(kd::StagedTrainer(student, std::nullopt, {kd::Stage("x", torch::nn::AnyModule())}), kd::Error);
  kd::StagedTrainer t(student, std::nullopt,
                      {kd::Stage("x", torch::nn::AnyModule(kd::HardLabelCE())).steps(1).trainable({"nothing_matches"})});
  try {
    t.fit(synthetic(8, 0));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.fc1.weight"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

TEST(StagedTrainer, SelfDistillationUsesTheStudentsOwnEma) {
  auto data = synthetic(64, 6);
  auto losses_for = [&](double decay) {
    torch::manual_seed(3);
    kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                        {kd::Stage("self", torch::nn::AnyModule(kd::TemperatureKL())).steps(6).lr(0.05)},
                        kd::StagedTrainerOptions().batch_size(16).ema_decay(decay).self_distillation(true));
    auto rec = std::make_shared<Recorder>();
    t.add_callback(rec);
    t.fit(data);
    return rec->losses;
  };
  // Decay → 0: the EMA is the current student, so the KL to itself is 0 at every step.
  for (double l : losses_for(1e-12)) EXPECT_NEAR(l, 0.0, 1e-9);
  // A slow EMA lags behind the student: zero at the first step (EMA = initial weights), positive after.
  auto slow = losses_for(0.9);
  EXPECT_NEAR(slow[0], 0.0, 1e-9);
  EXPECT_GT(slow[3], 1e-6);
  kd::Student s(std::make_shared<MlpImpl>());
  EXPECT_THROW(kd::StagedTrainer(s, std::nullopt, {kd::Stage("x", torch::nn::AnyModule(kd::TemperatureKL()))},
                                 kd::StagedTrainerOptions().self_distillation(true)),
               kd::Error);
}

// BatchNorm on the raw inputs, then a linear head: the running mean is a closed form of the data.
struct BnNetImpl : kd::Model {
  BnNetImpl() {
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
    fc = register_module("fc", torch::nn::Linear(8, 4));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = fc->forward(bn->forward(x));
    return out;
  }
  torch::nn::BatchNorm1d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};

TEST(StagedTrainer, SelfDistillationKeepsTheStudentsOwnBatchNormStatisticsAcrossMicroBatches) {
  // Every example is the same vector c, so each micro-batch has mean c. One step of two micro-batches:
  // the student's running mean goes 0 -> 0.1·c -> 0.9·0.1·c + 0.1·c = 0.19·c (BN momentum 0.1). The
  // EMA-teacher pass in between runs in eval mode and must not put the EMA's older statistics back.
  const auto c = torch::linspace(1, 8, 8);
  kd::data::TensorDataset data{c.repeat({32, 1}), torch::randint(0, 4, {32})};
  auto net = std::make_shared<BnNetImpl>();
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {kd::Stage("self", torch::nn::AnyModule(kd::TemperatureKL())).steps(1).lr(0.01)},
                      kd::StagedTrainerOptions().batch_size(16).accumulation(2).ema_decay(0.5).self_distillation(true));
  t.fit(data);
  EXPECT_TRUE(torch::allclose(net->bn->running_mean, 0.19 * c, 1e-5, 1e-6)) << net->bn->running_mean;
}

}  // namespace

namespace {

// Logits from inputs[:, 1:5]: a "hard" example has all zeros there (uniform teacher, maximal entropy).
struct SliceTeacherImpl : kd::Model {
  SliceTeacherImpl() { dummy = register_parameter("dummy", torch::zeros({1})); }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = x.slice(1, 1, 5) + dummy;
    return out;
  }
  torch::Tensor dummy;
};

// Records which examples (inputs[:, 0] holds the index) the trainer fed it.
struct RecordingLossImpl : torch::nn::Cloneable<RecordingLossImpl> {
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    auto ids = b.inputs.select(1, 0).to(torch::kLong);
    if (!b.step.sanity_check) for (int64_t i = 0; i < ids.numel(); ++i) seen.push_back(ids[i].item<int64_t>());
    kd::LossResult r;
    r.total = (b.student.logits * 0).sum();
    return r;
  }
  std::vector<int64_t> seen;
};
TORCH_MODULE(RecordingLoss);

TEST(StagedTrainer, HardExampleMiningFavoursHighEntropyTeacherExamples) {
  const int64_t n = 400;
  auto x = torch::zeros({n, 8});
  x.select(1, 0).copy_(torch::arange(n));
  for (int64_t i = 40; i < n; ++i) x[i][1 + i % 4] = 20.0;  // confident teacher; examples 0..39 stay uniform
  kd::data::TensorDataset data{x, torch::zeros({n}, torch::kLong)};
  kd::Teacher teacher(std::make_shared<SliceTeacherImpl>());
  RecordingLoss rec;
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher,
                      {kd::Stage("mine", torch::nn::AnyModule(rec)).epochs(2).lr(1e-3)},
                      kd::StagedTrainerOptions().batch_size(50).hard_example_mix(0.5));
  t.fit(data);
  ASSERT_EQ(rec->seen.size(), static_cast<size_t>(2 * n));
  int64_t hard = 0;
  for (auto i : rec->seen) hard += i < 40;
  // Uniform half: 10% hard. Entropy half: 40·ln4 / (40·ln4 + 360·H_conf), H_conf ≈ 0 → nearly all hard.
  // Expected ≈ 2·(20 + 200) = 440 of 800, against 80 without mining.
  EXPECT_GT(hard, 350);
  EXPECT_THROW(kd::StagedTrainer(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                                 {kd::Stage("x", torch::nn::AnyModule(kd::HardLabelCE()))},
                                 kd::StagedTrainerOptions().hard_example_mix(0.5)),
               kd::Error);
}

}  // namespace

#include "kd/losses/loss_traits.h"

namespace {

// A loss that needs input gradients: checks what the trainer prepared and uses ∂(Σ logits_t)/∂x_t.
struct InputGradLossImpl : torch::nn::Cloneable<InputGradLossImpl>, kd::NeedsInputGrad {
  void reset() override {}
  bool needs_input_grad() const override { return true; }
  kd::LossResult forward(const kd::DistillBatch& b) {
    EXPECT_TRUE(b.inputs.requires_grad());
    EXPECT_TRUE(b.teacher_inputs.defined() && b.teacher_inputs.requires_grad());
    auto g_t = torch::autograd::grad({b.teacher.logits.sum()}, {b.teacher_inputs})[0];
    auto g_s = torch::autograd::grad({b.student.logits.sum()}, {b.inputs}, {}, true, /*create_graph=*/true)[0];
    kd::LossResult r;
    r.total = (g_s - g_t).pow(2).mean();
    calls += !b.step.sanity_check;
    return r;
  }
  int calls = 0;
};
TORCH_MODULE(InputGradLoss);

TEST(StagedTrainer, LossesThatNeedInputGradientsGetLeavesAndALiveTeacher) {
  auto data = synthetic(32, 8);
  torch::manual_seed(2);
  kd::Teacher teacher(std::make_shared<MlpImpl>(12));
  InputGradLoss loss;
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher,
                      {kd::Stage("r1", torch::nn::AnyModule(loss)).steps(3).lr(0.01)},
                      kd::StagedTrainerOptions().batch_size(16));
  auto rec = std::make_shared<Recorder>();
  t.add_callback(rec);
  t.fit(data);
  EXPECT_EQ(loss->calls, 3);
  EXPECT_LT(rec->losses.back(), rec->losses.front());  // input-gradient matching is being optimised
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
}

}  // namespace
