// RewardFeedback: evaluations drive RewardWeighting's REINFORCE update, checked in closed form,
// alone and inside a StagedTrainer run.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/train/reward_feedback.h"
#include "training_fixtures.h"

namespace {
using ::testing::HasSubstr;

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

struct Const : torch::nn::Module {
  explicit Const(double v) : v(v) {}
  kd::LossResult forward(const kd::DistillBatch&) { return {torch::scalar_tensor(v, torch::kFloat64), {}}; }
  double v;
};

kd::EvalResult eval_result(double accuracy, const std::string& stage = "kd") {
  kd::EvalResult e;
  e.stage = stage;
  e.metrics["accuracy"] = accuracy;
  e.metrics["macro_f1"] = 0.5;
  return e;
}

TEST(RewardFeedback, OneEvaluationMovesTheWeightsAsTheRewardRulePrescribes) {
  for (double accuracy : {0.9, 0.2}) {  // above and below the baseline 0.5
    torch::manual_seed(21);
    const std::vector<double> theta0{0.2, -0.1, 0.0};
    const double lr = 0.4, sigma = 0.3;
    kd::RewardWeighting policy(kd::RewardWeightingOptions(3).init_logits(theta0).lr(lr).noise_std(sigma)
                                   .initial_baseline(0.5).hold_action(true));
    kd::WeightedSum sum({{"a", torch::nn::AnyModule(std::make_shared<Const>(1.0))},
                         {"b", torch::nn::AnyModule(std::make_shared<Const>(2.0))},
                         {"c", torch::nn::AnyModule(std::make_shared<Const>(3.0))}},
                        policy);
    kd::RewardFeedback feedback(policy, kd::RewardFeedbackOptions("accuracy"));
    kd::DistillBatch batch;
    sum->forward(batch);
    const auto eps = to_vector(policy->pending_noise());
    const auto before = to_vector(policy->mean_weights());
    feedback.on_eval(eval_result(accuracy));

    // θ₁ = θ₀ + η·(r − b)·ε/σ with r = accuracy, b = 0.5.
    const double advantage = accuracy - 0.5;
    EXPECT_NEAR(feedback.last_reward(), accuracy, 1e-15);
    EXPECT_NEAR(feedback.last_advantage(), advantage, 1e-15);
    EXPECT_EQ(feedback.updates(), 1);
    const auto theta1 = to_vector(policy->theta);
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(theta1[k], theta0[k] + lr * advantage * eps[k] / sigma, 1e-14) << k;
    EXPECT_NEAR(policy->baseline_value(), 0.9 * 0.5 + 0.1 * accuracy, 1e-15);
    // Direction: the loss the action favoured most (largest ε) gains mean weight after a good
    // evaluation and loses it after a bad one; the least favoured one does the opposite.
    const auto after = to_vector(policy->mean_weights());
    const int hi = static_cast<int>(std::max_element(eps.begin(), eps.end()) - eps.begin());
    const int lo = static_cast<int>(std::min_element(eps.begin(), eps.end()) - eps.begin());
    if (advantage > 0) {
      EXPECT_GT(after[hi], before[hi]);
      EXPECT_LT(after[lo], before[lo]);
    } else {
      EXPECT_LT(after[hi], before[hi]);
      EXPECT_GT(after[lo], before[lo]);
    }
    EXPECT_FALSE(policy->has_pending_action());
    // No pending action: the next evaluation is skipped.
    feedback.on_eval(eval_result(1.0));
    EXPECT_EQ(feedback.updates(), 1);
  }
}

TEST(RewardFeedback, ScaleStageFilterAndErrors) {
  kd::RewardWeighting policy(kd::RewardWeightingOptions(2).initial_baseline(0.0).hold_action(true));
  kd::WeightedSum sum({{"a", torch::nn::AnyModule(std::make_shared<Const>(1.0))},
                       {"b", torch::nn::AnyModule(std::make_shared<Const>(2.0))}},
                      policy);
  kd::RewardFeedback lower_is_better(policy, kd::RewardFeedbackOptions("accuracy").scale(-2.0).stage("kd"));
  sum->forward(kd::DistillBatch{});
  lower_is_better.on_eval(eval_result(0.25, "other"));  // another stage: ignored
  EXPECT_TRUE(policy->has_pending_action());
  lower_is_better.on_eval(eval_result(0.25));
  EXPECT_DOUBLE_EQ(lower_is_better.last_reward(), -0.5);
  EXPECT_DOUBLE_EQ(lower_is_better.last_advantage(), -0.5);

  sum->forward(kd::DistillBatch{});
  kd::RewardFeedback typo(policy, kd::RewardFeedbackOptions("acuracy"));
  try {
    typo.on_eval(eval_result(0.5));
    FAIL() << "a missing metric must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
    EXPECT_THAT(e.what(), HasSubstr("no metric 'acuracy'; did you mean 'accuracy'? it has: accuracy, macro_f1"));
  }
  EXPECT_THROW(kd::RewardFeedback(policy, kd::RewardFeedbackOptions("")), kd::Error);
  EXPECT_THROW(kd::RewardFeedback(policy, kd::RewardFeedbackOptions("accuracy").scale(0.0)), kd::Error);
  EXPECT_THROW(kd::RewardFeedback(kd::RewardWeighting(nullptr), kd::RewardFeedbackOptions("accuracy")), kd::Error);
  auto nan_eval = eval_result(NAN);
  EXPECT_THROW(kd::RewardFeedback(policy, kd::RewardFeedbackOptions("accuracy")).on_eval(nan_eval), kd::Error);
}

// Records, before RewardFeedback runs, the policy's state each evaluation judges; and each step's weights.
struct Probe : kd::Callback {
  explicit Probe(kd::RewardWeighting p) : policy(std::move(p)) {}
  void on_step_end(const kd::StepReport& r) override {
    w_kl.push_back(r.loss.parts.at("w.kl").item<double>());
    w_ce.push_back(r.loss.parts.at("w.ce").item<double>());
  }
  void on_eval(const kd::EvalResult& e) override {
    theta.push_back(to_vector(policy->theta));
    eps.push_back(policy->has_pending_action() ? to_vector(policy->pending_noise()) : std::vector<double>{});
    baseline.push_back(policy->baseline_value());
    accuracy.push_back(e.metrics.at("accuracy"));
  }
  kd::RewardWeighting policy;
  std::vector<double> w_kl, w_ce, baseline, accuracy;
  std::vector<std::vector<double>> theta, eps;
};

TEST(RewardFeedback, DrivesTheWeightsOfAStagedTrainerRun) {
  auto data = kd::testing::synthetic(64, 5);
  auto validation = kd::testing::synthetic(32, 6);
  torch::manual_seed(0);
  kd::Teacher teacher(std::make_shared<kd::testing::MlpImpl>(32));
  kd::Student student(std::make_shared<kd::testing::MlpImpl>());
  const double lr = 0.5, sigma = 0.2;
  kd::RewardWeighting policy(kd::RewardWeightingOptions(2).hold_action(true).lr(lr).noise_std(sigma));
  kd::WeightedSum sum({{"kl", kd::TemperatureKL()}, {"ce", kd::HardLabelCE()}}, policy);
  kd::StagedTrainer trainer(student, teacher,
                            {kd::Stage("kd", torch::nn::AnyModule(sum)).steps(6).eval_every(2).lr(0.05)},
                            kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  auto probe = std::make_shared<Probe>(policy);
  auto feedback = std::make_shared<kd::RewardFeedback>(policy, kd::RewardFeedbackOptions("accuracy"));
  trainer.add_callback(probe);     // runs first: sees the state each update starts from
  trainer.add_callback(feedback);
  trainer.fit(data, &validation);

  // Evaluations after steps 2, 4 and 6 (the last one is also the stage's end): one update each.
  ASSERT_EQ(probe->accuracy.size(), 3u);
  EXPECT_EQ(feedback->updates(), 3);
  EXPECT_EQ(policy->updates.item<int64_t>(), 3);
  for (size_t e = 0; e < 3; ++e) {
    ASSERT_EQ(probe->eps[e].size(), 2u) << "an action must be pending at evaluation " << e;
    // The weights of the two steps an evaluation judges are one held action: 2·softmax(θ + σε).
    double z0 = probe->theta[e][0] + sigma * probe->eps[e][0], z1 = probe->theta[e][1] + sigma * probe->eps[e][1];
    const double w_kl = 2 * std::exp(z0) / (std::exp(z0) + std::exp(z1));
    for (size_t s = 2 * e; s < 2 * e + 2; ++s) {
      EXPECT_NEAR(probe->w_kl[s], w_kl, 1e-12) << "step " << s;
      EXPECT_NEAR(probe->w_ce[s], 2 - w_kl, 1e-12) << "step " << s;
    }
    // The update that followed: θ ← θ + η·(r − b)·ε/σ, r = accuracy, b = r before the first update.
    const auto& next = e + 1 < 3 ? probe->theta[e + 1] : to_vector(policy->theta);
    const double b = std::isnan(probe->baseline[e]) ? probe->accuracy[e] : probe->baseline[e];
    const double advantage = probe->accuracy[e] - b;
    for (int k = 0; k < 2; ++k) {
      EXPECT_NEAR(next[k], probe->theta[e][k] + lr * advantage * probe->eps[e][k] / sigma, 1e-12) << e << " " << k;
    }
  }
  // A new action per evaluation period.
  EXPECT_NE(probe->w_kl[1], probe->w_kl[2]);
  EXPECT_NE(probe->w_kl[3], probe->w_kl[4]);
}

}  // namespace
