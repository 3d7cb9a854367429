// RewardWeighting: the sampled weights and the REINFORCE update against hand-computed closed forms.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/weighted_sum.h"
#include "kd/losses/weighting/reward.h"

namespace {

using ::testing::HasSubstr;

std::vector<torch::Tensor> scalars(std::vector<double> v, bool grad = false) {
  std::vector<torch::Tensor> out;
  for (double x : v) out.push_back(torch::scalar_tensor(x, torch::kFloat64).requires_grad_(grad));
  return out;
}

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// S·softmax(v), written out.
std::vector<double> scaled_softmax(const std::vector<double>& v, double S) {
  double z = 0;
  for (double x : v) z += std::exp(x);
  std::vector<double> out;
  for (double x : v) out.push_back(S * std::exp(x) / z);
  return out;
}

kd::StepInfo at_step(int64_t s) {
  kd::StepInfo i;
  i.global_step = s;
  return i;
}

TEST(RewardWeighting, SampledWeightsAndOneUpdateMatchClosedForm) {
  torch::manual_seed(11);
  const std::vector<double> theta0{0.1, -0.2, 0.3};
  const double sigma = 0.5, lr = 0.2, beta = 0.9;
  kd::RewardWeighting rw(
      kd::RewardWeightingOptions(3).init_logits(theta0).noise_std(sigma).lr(lr).baseline_momentum(beta).initial_baseline(
          1.0));
  auto L = scalars({2.0, 3.0, 5.0}, true);
  auto r = rw->combine(L, {"a", "b", "c"}, at_step(0));
  ASSERT_TRUE(rw->has_pending_action());
  const auto eps = to_vector(rw->pending_noise());

  // w = K·softmax(θ + σε); total = Σ w_k L_k with w constant.
  std::vector<double> z(3);
  for (int k = 0; k < 3; ++k) z[k] = theta0[k] + sigma * eps[k];
  const auto w = scaled_softmax(z, 3.0);
  const auto got_w = to_vector(r.weights);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(got_w[k], w[k], 1e-14) << k;
  EXPECT_NEAR(r.total.item<double>(), 2 * w[0] + 3 * w[1] + 5 * w[2], 1e-12);
  r.total.backward();
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(L[k].grad().item<double>(), w[k], 1e-14);
  EXPECT_FALSE(rw->theta.requires_grad());

  // update(r = 2): A = r − b = 1; θ ← θ + lr·A·ε/σ; b ← β·b + (1 − β)·r.
  const double advantage = rw->update(2.0);
  EXPECT_DOUBLE_EQ(advantage, 1.0);
  const auto theta1 = to_vector(rw->theta);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(theta1[k], theta0[k] + lr * 1.0 * eps[k] / sigma, 1e-14) << k;
  EXPECT_NEAR(rw->baseline_value(), 0.9 * 1.0 + 0.1 * 2.0, 1e-15);
  EXPECT_FALSE(rw->has_pending_action());
  EXPECT_EQ(rw->updates.item<int64_t>(), 1);

  // A second step and update(r = 0.5): A = 0.5 − 1.1 = −0.6.
  rw->combine(L, {"a", "b", "c"}, at_step(1));
  const auto eps2 = to_vector(rw->pending_noise());
  EXPECT_NEAR(rw->update(0.5), -0.6, 1e-15);
  const auto theta2 = to_vector(rw->theta);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(theta2[k], theta1[k] + lr * -0.6 * eps2[k] / sigma, 1e-14) << k;
  EXPECT_NEAR(rw->baseline_value(), 0.9 * 1.1 + 0.1 * 0.5, 1e-15);
}

TEST(RewardWeighting, FirstRewardInitialisesTheBaseline) {
  torch::manual_seed(1);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2));
  EXPECT_TRUE(std::isnan(rw->baseline_value()));
  rw->combine(scalars({1.0, 1.0}), {"a", "b"}, at_step(0));
  EXPECT_DOUBLE_EQ(rw->update(3.0), 0.0);  // A = r − r
  EXPECT_DOUBLE_EQ(rw->theta[0].item<double>(), 0.0);
  EXPECT_DOUBLE_EQ(rw->baseline_value(), 3.0);
}

TEST(RewardWeighting, OneActionPerOptimizerStepAndNoiseFreeInEval) {
  torch::manual_seed(5);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2).scale(1.0).init_logits({0.4, -0.4}));
  auto L = scalars({1.0, 1.0});
  const auto w0 = to_vector(rw->combine(L, {"a", "b"}, at_step(7)).weights);
  const auto w1 = to_vector(rw->combine(L, {"a", "b"}, at_step(7)).weights);  // accumulation micro-batch
  EXPECT_EQ(w0, w1);
  const auto w2 = to_vector(rw->combine(L, {"a", "b"}, at_step(8)).weights);
  EXPECT_NE(w0, w2);
  EXPECT_NEAR(w2[0] + w2[1], 1.0, 1e-15);  // scale S = 1

  rw->update(0.0);
  rw->eval();
  const auto we = to_vector(rw->combine(L, {"a", "b"}, at_step(9)).weights);
  const auto expected = scaled_softmax({0.4, -0.4}, 1.0);  // θ unchanged: the first update has A = 0
  EXPECT_NEAR(we[0], expected[0], 1e-15);
  EXPECT_NEAR(we[1], expected[1], 1e-15);
  EXPECT_FALSE(rw->has_pending_action());
  EXPECT_EQ(to_vector(rw->mean_weights()), we);
}

TEST(RewardWeighting, LearnsToFavourTheRewardedLoss) {
  // Reward = the weight the action gave loss 0: θ_0 − θ_1 must grow.
  torch::manual_seed(2);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2).lr(0.5).noise_std(0.3));
  auto L = scalars({1.0, 1.0});
  for (int64_t s = 0; s < 300; ++s) {
    const auto w = rw->combine(L, {"a", "b"}, at_step(s)).weights;
    rw->update(w[0].item<double>());
  }
  const auto mean = to_vector(rw->mean_weights());
  EXPECT_GT(mean[0], 1.5) << mean[0] << " " << mean[1];
}

TEST(RewardWeighting, InsideWeightedSumLogsWeightsEveryStep) {
  torch::manual_seed(4);
  const double sigma = 0.1, lr = 0.5;
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2).noise_std(sigma).lr(lr).initial_baseline(0.0));
  struct Const : torch::nn::Module {
    explicit Const(double v) : v(v) {}
    kd::LossResult forward(const kd::DistillBatch&) { return {torch::scalar_tensor(v, torch::kFloat64), {}}; }
    double v;
  };
  kd::WeightedSum total({{"a", torch::nn::AnyModule(std::make_shared<Const>(2.0))},
                         {"b", torch::nn::AnyModule(std::make_shared<Const>(4.0)), 0.5}},
                        rw);
  std::vector<double> theta{0.0, 0.0};
  double baseline = 0.0;
  std::vector<double> logged_a;
  for (int64_t step = 0; step < 4; ++step) {
    kd::DistillBatch batch;
    batch.step.global_step = step;
    const auto r = total->forward(batch);
    const auto eps = to_vector(rw->pending_noise());
    // This step's weights: S·softmax(θ + σε), θ as the previous updates left it, S = K = 2.
    const auto w = scaled_softmax({theta[0] + sigma * eps[0], theta[1] + sigma * eps[1]}, 2.0);
    EXPECT_NEAR(r.parts.at("w.a").item<double>(), w[0], 1e-12) << step;
    EXPECT_NEAR(r.parts.at("w.b").item<double>(), 0.5 * w[1], 1e-12) << step;  // term weight × policy weight
    EXPECT_NEAR(r.total.item<double>(), 2.0 * w[0] + 0.5 * 4.0 * w[1], 1e-12) << step;
    EXPECT_NEAR(r.parts.at("weighting.theta.a").item<double>(), theta[0], 1e-14) << step;
    EXPECT_NEAR(r.parts.at("weighting.baseline").item<double>(), baseline, 1e-14) << step;
    logged_a.push_back(r.parts.at("w.a").item<double>());
    // Reward: +1 on even steps, −1 on odd ones; θ ← θ + lr·(r − b)·ε/σ, b ← 0.9·b + 0.1·r.
    const double reward = step % 2 == 0 ? 1.0 : -1.0;
    const double advantage = reward - baseline;
    EXPECT_NEAR(rw->update(reward), advantage, 1e-14);
    for (int k = 0; k < 2; ++k) theta[k] += lr * advantage * eps[k] / sigma;
    baseline = 0.9 * baseline + 0.1 * reward;
    const auto got = to_vector(rw->theta);
    EXPECT_NEAR(got[0], theta[0], 1e-12) << step;
    EXPECT_NEAR(got[1], theta[1], 1e-12) << step;
  }
  // A fresh action each step: the logged weights differ from step to step.
  for (size_t i = 1; i < logged_a.size(); ++i) EXPECT_NE(logged_a[i], logged_a[i - 1]) << i;
}

TEST(RewardWeighting, HoldActionKeepsOneActionUntilTheUpdate) {
  torch::manual_seed(9);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2).hold_action(true).initial_baseline(0.0).lr(0.3));
  auto L = scalars({1.0, 1.0});
  const auto w0 = to_vector(rw->combine(L, {"a", "b"}, at_step(0)).weights);
  const auto eps = to_vector(rw->pending_noise());
  for (int64_t s = 1; s < 5; ++s) EXPECT_EQ(to_vector(rw->combine(L, {"a", "b"}, at_step(s)).weights), w0) << s;
  EXPECT_EQ(to_vector(rw->pending_noise()), eps);
  rw->update(2.0);
  EXPECT_FALSE(rw->has_pending_action());
  const auto w1 = to_vector(rw->combine(L, {"a", "b"}, at_step(5)).weights);
  EXPECT_NE(w1, w0);  // a new action after the update
  EXPECT_NE(to_vector(rw->pending_noise()), eps);
}

TEST(RewardWeighting, PendingActionIsStateThatACopyKeeps) {
  // The action lives in buffers, so a checkpoint (or clone) taken mid-action resumes it.
  torch::manual_seed(3);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(3).hold_action(true));
  rw->combine(scalars({1.0, 2.0, 3.0}), {"a", "b", "c"}, at_step(4));
  auto copy = std::dynamic_pointer_cast<kd::RewardWeightingImpl>(rw->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(copy->has_pending_action());
  EXPECT_EQ(to_vector(copy->pending_noise()), to_vector(rw->pending_noise()));
  EXPECT_EQ(copy->action_step.item<int64_t>(), 4);
  std::vector<std::string> buffers;
  for (const auto& b : rw->named_buffers()) buffers.push_back(b.key());
  EXPECT_EQ(buffers, (std::vector<std::string>{"theta", "baseline", "updates", "noise", "action_step"}));
}

TEST(RewardWeighting, Errors) {
  EXPECT_THROW(kd::RewardWeighting(kd::RewardWeightingOptions(2).noise_std(0.0)), kd::Error);
  EXPECT_THROW(kd::RewardWeighting(kd::RewardWeightingOptions(2).init_logits({1.0})), kd::Error);
  EXPECT_THROW(kd::RewardWeighting(kd::RewardWeightingOptions(2).baseline_momentum(1.0)), kd::Error);
  kd::RewardWeighting rw(kd::RewardWeightingOptions(2));
  try {
    rw->update(1.0);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kState);
    EXPECT_THAT(e.what(), HasSubstr("no pending action"));
  }
  rw->combine(scalars({1.0, 2.0}), {"a", "b"}, at_step(0));
  try {
    rw->update(NAN);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
  }
  EXPECT_THROW(rw->combine(scalars({1.0}), {"a"}, at_step(0)), kd::Error);
}

}  // namespace
