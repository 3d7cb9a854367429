// NonFinitePolicy in kd::StagedTrainer: a NaN loss or a NaN gradient injected at chosen steps is
// detected every step, never reaches the weights, and is handled as the policy says (stop, skip the
// update, lower the learning rate, roll back to the newest checkpoint), with the count reported.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;

/// Cross-entropy, poisoned at the listed global steps (0-based): a NaN loss, or (with nan_gradient)
/// a finite loss whose gradient is NaN — sqrt(|0·z|) is 0, its derivative 0·∞. `once` poisons each
/// step only the first time it runs (so a rolled-back run gets past it).
struct PoisonedCeImpl : torch::nn::Cloneable<PoisonedCeImpl> {
  PoisonedCeImpl(std::set<int64_t> at, bool nan_gradient, bool once)
      : at(std::move(at)), nan_gradient(nan_gradient), once(once) {}
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& batch) {
    auto r = ce->forward(batch);
    const int64_t step = batch.step.global_step;
    if (at.count(step) && !(once && done.count(step))) {
      done.insert(step);
      r.total = nan_gradient ? r.total + (batch.student.logits * 0).abs().sqrt().sum()
                             : r.total * std::numeric_limits<double>::quiet_NaN();
    }
    return r;
  }
  kd::HardLabelCE ce;
  std::set<int64_t> at, done;
  bool nan_gradient, once;
};
TORCH_MODULE(PoisonedCe);

struct Trace : kd::Callback {
  explicit Trace(torch::nn::Module& model) : model(model) {}
  void on_step_end(const kd::StepReport& r) override {
    steps.push_back(r.step.global_step);
    lrs.push_back(r.lr);
    skipped.push_back(r.skipped_nonfinite);
    totals.push_back(r.nonfinite_total);
    std::vector<torch::Tensor> w;
    for (auto& p : model.parameters()) w.push_back(p.detach().clone());
    weights.push_back(w);
  }
  void on_fit_end(const kd::TrainSummary& s) override { fit_end_nonfinite = s.nonfinite_steps; }
  torch::nn::Module& model;
  std::vector<int64_t> steps, totals;
  std::vector<double> lrs;
  std::vector<bool> skipped;
  std::vector<std::vector<torch::Tensor>> weights;
  int64_t fit_end_nonfinite = -1;
};

bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) if (!torch::equal(a[i], b[i])) return false;
  return true;
}

bool all_finite(torch::nn::Module& m) {
  for (auto& p : m.parameters()) if (!torch::isfinite(p).all().item<bool>()) return false;
  return true;
}

kd::Stage stage(PoisonedCe loss, int64_t steps) {
  return kd::Stage("ce", torch::nn::AnyModule(loss)).steps(steps).lr(0.05);
}

kd::StagedTrainerOptions options(kd::NonFinitePolicy policy) {
  return kd::StagedTrainerOptions().batch_size(16).nonfinite(policy).clip_norm(1.0);
}

}  // namespace

TEST(NonFinitePolicy, SkipDropsTheUpdateOfExactlyThePoisonedSteps) {
  for (bool nan_gradient : {false, true}) {
    SCOPED_TRACE(nan_gradient ? "NaN gradient" : "NaN loss");
    const auto data = synthetic(64, 3);
    torch::manual_seed(1);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer t(kd::Student(net), std::nullopt, {stage(PoisonedCe(std::set<int64_t>{2, 5}, nan_gradient, false), 8)},
                        options(kd::NonFinitePolicy::kSkipStep));
    auto trace = std::make_shared<Trace>(*net);
    t.add_callback(trace);
    const auto s = t.fit(data);
    EXPECT_EQ(s.steps, 8);
    EXPECT_EQ(s.nonfinite_steps, 2);
    EXPECT_EQ(trace->fit_end_nonfinite, 2);
    EXPECT_EQ(trace->skipped, (std::vector<bool>{false, false, true, false, false, true, false, false}));
    EXPECT_EQ(trace->totals, (std::vector<int64_t>{0, 0, 1, 1, 1, 2, 2, 2}));
    EXPECT_TRUE(same(trace->weights[2], trace->weights[1]));   // no update at the poisoned step
    EXPECT_TRUE(same(trace->weights[5], trace->weights[4]));
    EXPECT_FALSE(same(trace->weights[3], trace->weights[2]));  // the next step trains again
    EXPECT_TRUE(all_finite(*net));
  }
}

TEST(NonFinitePolicy, LowerLrHalvesEveryLearningRateFromThePoisonedStepOn) {
  const auto data = synthetic(64, 3);
  auto run = [&](std::set<int64_t> at) {
    torch::manual_seed(1);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer t(kd::Student(net), std::nullopt, {stage(PoisonedCe(at, false, false), 6)},
                        options(kd::NonFinitePolicy::kLowerLr).lr_backoff(0.5));
    auto trace = std::make_shared<Trace>(*net);
    t.add_callback(trace);
    const auto s = t.fit(data);
    return std::make_pair(s, trace);
  };
  const auto [clean, clean_trace] = run({});
  const auto [poisoned, trace] = run({3});
  EXPECT_EQ(poisoned.nonfinite_steps, 1);
  EXPECT_DOUBLE_EQ(poisoned.lr_scale, 0.5);
  for (size_t i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(trace->lrs[i], clean_trace->lrs[i]);
  // The schedule's lr at the poisoned step is reported as it was used (unscaled); from the next on, x0.5.
  EXPECT_DOUBLE_EQ(trace->lrs[3], clean_trace->lrs[3]);
  for (size_t i = 4; i < 6; ++i) EXPECT_DOUBLE_EQ(trace->lrs[i], 0.5 * clean_trace->lrs[i]);
}

TEST(NonFinitePolicy, RollbackReturnsToTheNewestCheckpointWithALowerLr) {
  const auto data = synthetic(64, 3);
  const auto dir = kd::testing::temp_dir("rollback");
  torch::manual_seed(1);
  auto net = std::make_shared<MlpImpl>();
  // Checkpoints after steps 2 and 4 (global_step 2, 4); step index 5 (the sixth) is poisoned once.
  kd::StagedTrainer t(kd::Student(net), std::nullopt, {stage(PoisonedCe(std::set<int64_t>{5}, false, true), 8)},
                      options(kd::NonFinitePolicy::kRollback).checkpoint_dir(dir).checkpoint_every(2).fingerprint("f"));
  auto trace = std::make_shared<Trace>(*net);
  t.add_callback(trace);
  const auto s = t.fit(data);
  EXPECT_EQ(s.rollbacks, 1);
  EXPECT_EQ(s.nonfinite_steps, 1);
  EXPECT_DOUBLE_EQ(s.lr_scale, 0.5);
  EXPECT_EQ(s.steps, 8);
  // Steps 0..4 ran, step 5 failed (no report: it rolled back first), then 4..7 again from checkpoint 4.
  EXPECT_EQ(trace->steps, (std::vector<int64_t>{0, 1, 2, 3, 4, 4, 5, 6, 7}));
  EXPECT_FALSE(same(trace->weights[5], trace->weights[4]));  // step 4 redone at half the lr
  EXPECT_DOUBLE_EQ(trace->lrs[5], 0.5 * trace->lrs[4]);
  EXPECT_TRUE(all_finite(*net));
}

TEST(NonFinitePolicy, RollbackBeforeAnyCheckpointLowersTheLrInstead) {
  const auto data = synthetic(64, 3);
  torch::manual_seed(1);
  auto net = std::make_shared<MlpImpl>();
  kd::StagedTrainer t(kd::Student(net), std::nullopt, {stage(PoisonedCe(std::set<int64_t>{1}, false, true), 4)},
                      options(kd::NonFinitePolicy::kRollback)
                          .checkpoint_dir(kd::testing::temp_dir("rollback_early"))
                          .checkpoint_every(100));
  const auto s = t.fit(data);
  EXPECT_EQ(s.rollbacks, 0);
  EXPECT_EQ(s.nonfinite_steps, 1);
  EXPECT_DOUBLE_EQ(s.lr_scale, 0.5);
}

TEST(NonFinitePolicy, StopThrowsNamingTheStepAndLeavesCheckpointsAlone) {
  const auto data = synthetic(64, 3);
  const auto dir = kd::testing::temp_dir("nonfinite_stop");
  torch::manual_seed(1);
  auto net = std::make_shared<MlpImpl>();
  kd::StagedTrainer t(kd::Student(net), std::nullopt, {stage(PoisonedCe(std::set<int64_t>{3}, false, false), 6)},
                      options(kd::NonFinitePolicy::kStop).checkpoint_dir(dir).checkpoint_every(2));
  auto trace = std::make_shared<Trace>(*net);
  t.add_callback(trace);
  try {
    t.fit(data);
    FAIL() << "a NaN loss under the 'stop' policy must throw";
  } catch (const kd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("non-finite loss at step 4 (stage 'ce', step 4/6)"), std::string::npos) << what;
    EXPECT_NE(what.find("ckpt-0000000002-"), std::string::npos) << what;  // names the newest checkpoint
  }
  EXPECT_TRUE(same([&] {
    std::vector<torch::Tensor> w;
    for (auto& p : net->parameters()) w.push_back(p.detach().clone());
    return w;
  }(), trace->weights[2]));  // the weights after step 3 (index 2): the NaN step changed nothing
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.path().extension() == ".pt";
  EXPECT_EQ(files, 1u);
}

TEST(NonFinitePolicy, TooManyInARowStopWhateverThePolicy) {
  const auto data = synthetic(64, 3);
  torch::manual_seed(1);
  auto net = std::make_shared<MlpImpl>();
  kd::StagedTrainer t(kd::Student(net), std::nullopt,
                      {stage(PoisonedCe(std::set<int64_t>{1, 2, 3, 4, 5, 6}, false, false), 8)},
                      options(kd::NonFinitePolicy::kSkipStep).max_consecutive_nonfinite(3));
  try {
    t.fit(data);
    FAIL() << "three non-finite steps in a row must stop the run";
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 steps in a row were non-finite"), std::string::npos) << e.what();
  }
}

namespace {

/// A teacher whose logits are NaN for the examples marked by x[0] > 50 (a finite input).
struct NanRowsTeacherImpl : kd::Model {
  NanRowsTeacherImpl() { fc = register_module("fc", torch::nn::Linear(8, 4)); }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = fc->forward(x).masked_fill(x.select(1, 0).unsqueeze(1) > 50, std::numeric_limits<double>::quiet_NaN());
    return out;
  }
  torch::nn::Linear fc{nullptr};
};

// Synthetic data with example 5 marked: the teacher's logits for it are NaN.
kd::data::TensorDataset marked_data() {
  auto data = synthetic(64, 3);
  data.inputs = data.inputs.clone();
  data.inputs[5][0] = 100.0;
  return data;
}

// Stages as kd-train builds them: a WeightedSum of registered losses (KL at T = 3 and CE).
std::vector<kd::Stage> kl_and_ce_stages(int64_t steps) {
  return kd::build_stages({kd::StageSpec("logits").steps(steps).lr(0.05).losses(
      {kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0),
       kd::LossSpec("hard_label_ce").name("ce").weight(0.2)})});
}

}  // namespace

// The NaN comes from the teacher, through a real stage loss (a WeightedSum of TemperatureKL and HardLabelCE):
// the losses report it, and the trainer's policy, not the loss, decides. Batches of 16 in a shuffled order:
// the step holding example 5 has a NaN loss in every epoch.
TEST(NonFinitePolicy, ANaNLossInsideAStageLossFollowsEveryPolicy) {
  const auto data = marked_data();
  for (auto policy : {kd::NonFinitePolicy::kSkipStep, kd::NonFinitePolicy::kLowerLr}) {
    SCOPED_TRACE(policy == kd::NonFinitePolicy::kSkipStep ? "skip" : "lower_lr");
    torch::manual_seed(1);
    kd::Teacher teacher(std::make_shared<NanRowsTeacherImpl>());
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer t(kd::Student(net), teacher, kl_and_ce_stages(12), options(policy));
    auto trace = std::make_shared<Trace>(*net);
    t.add_callback(trace);
    const auto s = t.fit(data);  // no throw: the policy handles every NaN step
    EXPECT_EQ(s.nonfinite_steps, 3);  // 12 steps, 4 per epoch: example 5 is in one step of each epoch
    EXPECT_EQ(std::count(trace->skipped.begin(), trace->skipped.end(), true), 3);
    EXPECT_TRUE(all_finite(*net));
    EXPECT_DOUBLE_EQ(s.lr_scale, policy == kd::NonFinitePolicy::kLowerLr ? 0.125 : 1.0);
  }
  // Rollback returns to the newest checkpoint; the same batch is NaN again (the data, not the step size, is
  // at fault), so after max_consecutive_nonfinite returns in a row the run stops, naming the policy.
  torch::manual_seed(1);
  kd::Teacher teacher(std::make_shared<NanRowsTeacherImpl>());
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher, kl_and_ce_stages(12),
                      options(kd::NonFinitePolicy::kRollback)
                          .checkpoint_dir(kd::testing::temp_dir("nonfinite_stage_loss"))
                          .checkpoint_every(1)
                          .max_consecutive_nonfinite(3));
  try {
    t.fit(data);
    FAIL() << "a batch that is NaN after every rollback must stop the run";
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 steps in a row were non-finite, stopping (policy 'rollback'"),
              std::string::npos)
        << e.what();
  }
}

// Under 'stop', the message names the source of the NaN: the live teacher's logits and the example.
TEST(NonFinitePolicy, StopNamesTheTeacherOutputsThatHoldTheNaN) {
  const auto data = marked_data();
  torch::manual_seed(1);
  kd::Teacher teacher(std::make_shared<NanRowsTeacherImpl>());
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), teacher, kl_and_ce_stages(4),
                      options(kd::NonFinitePolicy::kStop));
  try {
    t.fit(data);
    FAIL() << "a NaN loss under the 'stop' policy must throw";
  } catch (const kd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("non-finite loss at step"), std::string::npos) << what;
    EXPECT_NE(what.find("kl nan"), std::string::npos) << what;
    EXPECT_NE(what.find("NaN or Inf in the teacher: logits [16, 4] (training rows 5)"), std::string::npos) << what;
  }
}

// A NaN row in a teacher cache is named as the cache's, with the file and the row.
TEST(NonFinitePolicy, StopNamesTheTeacherCacheThatHoldsTheNaN) {
  const auto data = marked_data();
  torch::manual_seed(1);
  kd::Teacher teacher(std::make_shared<NanRowsTeacherImpl>());
  const auto path = kd::testing::temp_dir("nonfinite_cache") + "/teacher.cache";
  auto cache = kd::data::TeacherCache::open_or_build(path, teacher, data);
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, kl_and_ce_stages(4),
                      options(kd::NonFinitePolicy::kStop).teacher_cache(std::shared_ptr<kd::data::TeacherCache>(std::move(cache))));
  try {
    t.fit(data);
    FAIL() << "a NaN loss under the 'stop' policy must throw";
  } catch (const kd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("NaN or Inf in the teacher cache '" + path + "': logits [16, 4] (training rows 5)"),
              std::string::npos)
        << what;
    EXPECT_EQ(what.find("fix the model"), std::string::npos) << what;
  }
}

TEST(NonFinitePolicy, BadOptionsAreRefused) {
  auto make = [](kd::StagedTrainerOptions o) {
    kd::StagedTrainer(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(1)}, o);
  };
  EXPECT_THROW(make(kd::StagedTrainerOptions().nonfinite(kd::NonFinitePolicy::kRollback)), kd::Error);  // no checkpoint dir
  EXPECT_THROW(make(kd::StagedTrainerOptions().lr_backoff(0)), kd::Error);
  EXPECT_THROW(make(kd::StagedTrainerOptions().max_consecutive_nonfinite(0)), kd::Error);
}
