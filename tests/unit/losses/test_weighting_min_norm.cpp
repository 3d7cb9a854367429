// MinNormWeighting (MGDA): K = 2 closed form, K = 3 against a brute-force grid and the KKT conditions,
// gradients through the policy, and the fallback without gradients.
#include <cmath>
#include <limits>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/weighted_sum.h"
#include "kd/losses/weighting/min_norm.h"

namespace {

using ::testing::HasSubstr;

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// αᵀGα with G as a row-major vector.
double quad(const std::vector<double>& G, const std::vector<double>& a) {
  const size_t K = a.size();
  double v = 0;
  for (size_t i = 0; i < K; ++i)
    for (size_t j = 0; j < K; ++j) v += a[i] * a[j] * G[i * K + j];
  return v;
}
double quad(const torch::Tensor& G, const std::vector<double>& a) { return quad(to_vector(G), a); }

TEST(MinNormWeights, TwoLossesClosedForm) {
  // α₁ = (G₂₂ − G₁₂)/(G₁₁ + G₂₂ − 2G₁₂): g₁ ⊥ g₂, ‖g₁‖² = 1, ‖g₂‖² = 4 → 0.8.
  auto a = to_vector(kd::functional::min_norm_weights(torch::tensor({{1.0, 0.0}, {0.0, 4.0}}, torch::kFloat64)));
  EXPECT_NEAR(a[0], 0.8, 1e-15);
  EXPECT_NEAR(a[1], 0.2, 1e-15);
  // g₁·g₂ = 2 > ‖g₂‖² = 1: the min-norm point is g₂ itself (α₁ clamps to 0).
  a = to_vector(kd::functional::min_norm_weights(torch::tensor({{4.0, 2.0}, {2.0, 1.0}}, torch::kFloat64)));
  EXPECT_DOUBLE_EQ(a[0], 0.0);
  EXPECT_DOUBLE_EQ(a[1], 1.0);
  // g₁ = g₂: every α is optimal; ½, ½ by convention.
  a = to_vector(kd::functional::min_norm_weights(torch::tensor({{2.0, 2.0}, {2.0, 2.0}}, torch::kFloat64)));
  EXPECT_DOUBLE_EQ(a[0], 0.5);
  // The exact solver agrees on a generic case: G from g₁ = (1, 2), g₂ = (−3, 1).
  const auto G = torch::tensor({{5.0, -1.0}, {-1.0, 10.0}}, torch::kFloat64);
  const double a1 = (10.0 + 1.0) / (5.0 + 10.0 + 2.0);
  for (auto solver : {kd::MinNormSolver::kAuto, kd::MinNormSolver::kExact, kd::MinNormSolver::kFrankWolfe}) {
    a = to_vector(kd::functional::min_norm_weights(G, solver));
    EXPECT_NEAR(a[0], a1, 1e-9) << static_cast<int>(solver);
  }
}

TEST(MinNormWeights, KnownThreeLossSolution) {
  // g = e₁, e₂, (1, 1): the min-norm point of the hull is (½, ½) = ½e₁ + ½e₂.
  const auto g = torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {1.0, 1.0}}, torch::kFloat64);
  const auto G = torch::mm(g, g.t());
  for (auto solver : {kd::MinNormSolver::kExact, kd::MinNormSolver::kFrankWolfe}) {
    const auto a = to_vector(kd::functional::min_norm_weights(G, solver));
    EXPECT_NEAR(a[0], 0.5, 1e-7);
    EXPECT_NEAR(a[1], 0.5, 1e-7);
    EXPECT_NEAR(a[2], 0.0, 1e-7);
  }
}

// For random gradients: the solvers' α against (1) the best point of a grid of step 1/600 on the
// simplex and (2) the KKT conditions of min αᵀGα on the simplex: (Gα)_j ≥ αᵀGα for all j, with
// equality where α_j > 0 — necessary and sufficient for this convex problem.
TEST(MinNormWeights, ThreeLossesAgainstGridAndKkt) {
  torch::manual_seed(7);
  for (int trial = 0; trial < 6; ++trial) {
    const auto g = torch::randn({3, 5}, torch::kFloat64) + (trial % 2 ? 0.8 : 0.0);  // odd trials: aligned
    const auto G = torch::mm(g, g.t());
    const auto Gv = to_vector(G);
    const int n = 600;
    double best = std::numeric_limits<double>::infinity();
    std::vector<double> best_a;
    for (int i = 0; i <= n; ++i) {
      for (int j = 0; i + j <= n; ++j) {
        const std::vector<double> a{double(i) / n, double(j) / n, double(n - i - j) / n};
        const double v = quad(Gv, a);
        if (v < best) {
          best = v;
          best_a = a;
        }
      }
    }
    for (auto solver : {kd::MinNormSolver::kAuto, kd::MinNormSolver::kExact, kd::MinNormSolver::kFrankWolfe}) {
      const auto a = to_vector(kd::functional::min_norm_weights(G, solver, 5000, 1e-14));
      const double v = quad(G, a);
      EXPECT_NEAR(a[0] + a[1] + a[2], 1.0, 1e-12);
      for (double x : a) EXPECT_GE(x, 0.0);
      const bool exact = solver != kd::MinNormSolver::kFrankWolfe;
      // The grid's best is above the true minimum; an exact solution is never worse than it.
      EXPECT_LE(v, best + (exact ? 1e-12 : 1e-7) * (1 + best)) << "trial " << trial;
      for (int k = 0; k < 3; ++k) EXPECT_NEAR(a[k], best_a[k], 2e-2) << "trial " << trial << " k " << k;
      if (exact) {
        const auto Ga = to_vector(torch::mv(G, torch::tensor(a, torch::kFloat64)));
        const double scale = G.diagonal().max().item<double>();
        for (int k = 0; k < 3; ++k) {
          EXPECT_GE(Ga[k], v - 1e-10 * scale) << "trial " << trial;
          if (a[k] > 1e-9) EXPECT_NEAR(Ga[k], v, 1e-10 * scale) << "trial " << trial;
        }
      }
    }
  }
}

TEST(MinNormWeights, ExactAndFrankWolfeAgreeForMoreLossesAndScale) {
  torch::manual_seed(9);
  const auto g = torch::randn({6, 4}, torch::kFloat64);
  const auto G = torch::mm(g, g.t());  // rank 4 < 6: affinely dependent faces are skipped
  const auto exact = kd::functional::min_norm_weights(G, kd::MinNormSolver::kExact);
  const auto fw = kd::functional::min_norm_weights(G, kd::MinNormSolver::kFrankWolfe, 20000, 1e-15);
  const double ve = quad(G, to_vector(exact)), vf = quad(G, to_vector(fw));
  EXPECT_LE(ve, vf + 1e-10);
  EXPECT_NEAR(ve, vf, 1e-6);
  // α does not depend on the scale of the gradients.
  const auto tiny = kd::functional::min_norm_weights(G * 1e-12, kd::MinNormSolver::kExact);
  EXPECT_LT((tiny - exact).abs().max().item<double>(), 1e-9);
}

// L_k = c_k·(g_k·θ) through student logits — gradients w.r.t. θ are exactly c_k·g_k.
struct LinearInTheta : torch::nn::Module {
  explicit LinearInTheta(torch::Tensor g) : g(std::move(g)) {}
  kd::LossResult forward(const kd::DistillBatch& b) { return {(b.student.logits * g).sum(), {}}; }
  torch::Tensor g;
};

TEST(MinNormWeighting, PolicyUsesTheGradientsOfTheSharedParameters) {
  auto theta = torch::tensor({0.3, -0.7}, torch::kFloat64).requires_grad_(true);
  const auto g1 = torch::tensor({1.0, 0.0}, torch::kFloat64), g2 = torch::tensor({0.0, 2.0}, torch::kFloat64);
  kd::MinNormWeighting mgda(kd::MinNormWeightingOptions({theta}));
  kd::WeightedSum total({{"a", torch::nn::AnyModule(std::make_shared<LinearInTheta>(g1))},
                         {"b", torch::nn::AnyModule(std::make_shared<LinearInTheta>(g2)), 1.5}},
                        mgda);
  kd::DistillBatch batch;
  batch.student.logits = theta * 1.0;
  const auto r = total->forward(batch);
  // The policy sees 1·L_a and 1.5·L_b: gradients (1, 0) and (0, 3) → G = diag(1, 9) → α = (0.9, 0.1).
  EXPECT_NEAR(r.parts.at("w.a").item<double>(), 0.9, 1e-12);
  EXPECT_NEAR(r.parts.at("w.b").item<double>(), 1.5 * 0.1, 1e-12);
  EXPECT_NEAR(r.parts.at("weighting.min_norm").item<double>(), 0.81 + 0.01 * 9, 1e-12);
  const double La = 0.3, Lb = -1.4;
  EXPECT_NEAR(r.total.item<double>(), 0.9 * La + 0.1 * 1.5 * Lb, 1e-12);
  r.total.backward();  // the graph was retained for it; α is a constant
  EXPECT_NEAR(theta.grad()[0].item<double>(), 0.9, 1e-12);
  EXPECT_NEAR(theta.grad()[1].item<double>(), 0.1 * 3.0, 1e-12);

  // Gram matrix of the policy against the hand-computed one.
  std::vector<torch::Tensor> losses{(theta * g1).sum(), (theta * g2).sum()};
  const auto G = mgda->gram(losses);
  EXPECT_LT((G - torch::tensor({{1.0, 0.0}, {0.0, 4.0}}, torch::kFloat64)).abs().max().item<double>(), 1e-15);

  // Without gradients (evaluation), the last weights are reused.
  torch::NoGradGuard no_grad;
  batch.student.logits = theta.detach();
  const auto e = total->forward(batch);
  EXPECT_NEAR(e.parts.at("w.a").item<double>(), 0.9, 1e-12);
}

TEST(MinNormWeighting, UnreachedParameterAndFirstEvalStep) {
  auto theta = torch::tensor({1.0, 1.0}, torch::kFloat64).requires_grad_(true);
  auto unused = torch::ones({3}, torch::kFloat64).requires_grad_(true);
  kd::MinNormWeighting mgda(kd::MinNormWeightingOptions({theta, unused}));
  {
    torch::NoGradGuard no_grad;  // before any training step: uniform
    auto r = mgda->combine({theta.sum(), theta.sum()}, {"a", "b"}, {});
    EXPECT_NEAR(r.weights[0].item<double>(), 0.5, 1e-15);
  }
  // L_b does not depend on θ at all (a constant): its gradient is 0 and the min-norm point is α = (0, 1).
  auto r = mgda->combine({(theta * 2).sum(), torch::scalar_tensor(3.0, torch::kFloat64)}, {"a", "b"}, {});
  EXPECT_NEAR(r.weights[0].item<double>(), 0.0, 1e-15);
  EXPECT_NEAR(r.weights[1].item<double>(), 1.0, 1e-15);
}

TEST(MinNormWeighting, Errors) {
  try {
    kd::functional::min_norm_weights(torch::zeros({2, 3}, torch::kFloat64));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("[2, 3]"));
  }
  EXPECT_THROW(kd::functional::min_norm_weights(torch::full({2, 2}, NAN, torch::kFloat64)), kd::Error);
  EXPECT_THROW(kd::MinNormWeighting(kd::MinNormWeightingOptions({})), kd::Error);
  kd::MinNormWeighting frozen(kd::MinNormWeightingOptions({torch::ones({2})}));
  auto x = torch::ones({2}).requires_grad_(true);
  try {
    frozen->combine({x.sum(), x.sum()}, {"a", "b"}, {});
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("none of the 1 shared parameters requires grad"));
  }
}

}  // namespace
