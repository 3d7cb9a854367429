// UncertaintyWeighting: closed form, analytic and finite-difference gradients w.r.t. s_k, use in a WeightedSum.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/weighted_sum.h"
#include "kd/losses/weighting/uncertainty.h"
#include "gradient_check.h"

namespace {

using ::testing::HasSubstr;

std::vector<torch::Tensor> scalars(std::vector<double> v, bool grad = false) {
  std::vector<torch::Tensor> out;
  for (double x : v) out.push_back(torch::scalar_tensor(x, torch::kFloat64).requires_grad_(grad));
  return out;
}

TEST(UncertaintyWeighting, ClosedForm) {
  kd::UncertaintyWeighting uw(3);
  uw->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    uw->log_vars.copy_(torch::tensor({0.0, std::log(2.0), -1.0}, torch::kFloat64));
  }
  auto L = scalars({2.0, 0.5, 0.25}, true);
  auto r = uw->combine(L, {"a", "b", "c"}, {});
  // Σ exp(−s)·L + s = 2 + 0 + 0.25 + log 2 + e·0.25 − 1
  const double expected = 2.0 + 0.25 + std::log(2.0) + std::exp(1.0) * 0.25 - 1.0;
  EXPECT_NEAR(r.total.item<double>(), expected, 1e-14);
  EXPECT_NEAR(r.weights[0].item<double>(), 1.0, 1e-15);
  EXPECT_NEAR(r.weights[1].item<double>(), 0.5, 1e-15);
  EXPECT_NEAR(r.weights[2].item<double>(), std::exp(1.0), 1e-14);
  EXPECT_FALSE(r.weights.requires_grad());
  EXPECT_NEAR(r.parts.at("log_var.b").item<double>(), std::log(2.0), 1e-15);

  r.total.backward();
  // ∂/∂s_k = 1 − exp(−s_k)·L_k;  ∂/∂L_k = exp(−s_k).
  const auto g = uw->log_vars.grad();
  EXPECT_NEAR(g[0].item<double>(), 1.0 - 2.0, 1e-14);
  EXPECT_NEAR(g[1].item<double>(), 1.0 - 0.25, 1e-14);
  EXPECT_NEAR(g[2].item<double>(), 1.0 - std::exp(1.0) * 0.25, 1e-14);
  EXPECT_NEAR(L[0].grad().item<double>(), 1.0, 1e-15);
  EXPECT_NEAR(L[1].grad().item<double>(), 0.5, 1e-15);
}

TEST(UncertaintyWeighting, FiniteDifferenceGradientInDouble) {
  torch::manual_seed(3);
  kd::UncertaintyWeighting uw(kd::UncertaintyWeightingOptions(4).init_log_var(0.3));
  uw->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    uw->log_vars.add_(torch::randn({4}, torch::kFloat64) * 0.5);
  }
  // Losses that themselves depend on an input x, so the check covers both s and x.
  auto x = torch::randn({4}, torch::kFloat64).requires_grad_(true);
  auto losses_of = [](const torch::Tensor& x) {
    return std::vector<torch::Tensor>{x.pow(2).sum(), x.abs().sum() + 1.0, (x[0] - x[1]).pow(2), x.exp().mean()};
  };
  const std::vector<std::string> names{"a", "b", "c", "d"};
  kd::testing::expect_gradients_match([&] { return uw->combine(losses_of(x), names, {}).total; },
                                      {{"log_vars", uw->log_vars}, {"x", x}});
}

TEST(UncertaintyWeighting, LearnsLogOfEachLoss) {
  // For fixed L_k > 0 the optimum is s_k = log L_k (weight 1/L_k).
  kd::UncertaintyWeighting uw(2);
  uw->to(torch::kFloat64);
  torch::optim::SGD opt(uw->parameters(), 0.5);
  for (int i = 0; i < 400; ++i) {
    opt.zero_grad();
    uw->combine(scalars({4.0, 0.5}), {"a", "b"}, {}).total.backward();
    opt.step();
  }
  EXPECT_NEAR(uw->log_vars[0].item<double>(), std::log(4.0), 1e-6);
  EXPECT_NEAR(uw->log_vars[1].item<double>(), std::log(0.5), 1e-6);
}

// L = c·Σz over student logits.
struct LinearLossImpl : torch::nn::Cloneable<LinearLossImpl> {
  explicit LinearLossImpl(double c) : c(c) {}
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) { return {c * b.student.logits.sum(), {}}; }
  double c;
};
TORCH_MODULE(LinearLoss);

TEST(UncertaintyWeighting, InsideWeightedSum) {
  kd::UncertaintyWeighting uw(2);
  uw->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    uw->log_vars.copy_(torch::tensor({0.5, -0.25}, torch::kFloat64));
  }
  // Term weights multiply the losses before the policy: w_k = c_k·exp(−s_k).
  kd::WeightedSum total({{"a", LinearLoss(1.0), 2.0}, {"b", LinearLoss(3.0)}}, uw);
  kd::DistillBatch batch;
  batch.student.logits = torch::tensor({1.0, 2.0}, torch::kFloat64);  // Σz = 3: L_a = 3, L_b = 9
  const auto r = total->forward(batch);
  const double expected = std::exp(-0.5) * 2.0 * 3.0 + 0.5 + std::exp(0.25) * 9.0 - 0.25;
  EXPECT_NEAR(r.total.item<double>(), expected, 1e-12);
  EXPECT_NEAR(r.parts.at("w.a").item<double>(), 2.0 * std::exp(-0.5), 1e-12);
  EXPECT_NEAR(r.parts.at("w.b").item<double>(), std::exp(0.25), 1e-12);
  EXPECT_NEAR(r.parts.at("weighting.log_var.a").item<double>(), 0.5, 1e-15);
  EXPECT_NEAR(r.parts.at("a").item<double>(), 3.0, 1e-15);
  EXPECT_TRUE(total->named_parameters().contains("weighting.log_vars"));
}

TEST(UncertaintyWeighting, Errors) {
  EXPECT_THROW(kd::UncertaintyWeighting(0), kd::Error);
  kd::UncertaintyWeighting uw(2);
  try {
    uw->combine(scalars({1.0}), {"a"}, {});
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("got 1 losses but was built for 2"));
  }
}

}  // namespace
