#pragma once
/// \file
/// Multiple-gradient descent weights: the min-norm point of the losses' gradients (MGDA).

#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"
#include "kd/losses/weighting/policy.h"

namespace kd {

/// How the min-norm problem is solved.
enum class MinNormSolver {
  kAuto,        ///< K = 2: closed form; 3 ≤ K ≤ 12: kExact; K > 12: kFrankWolfe
  kExact,       ///< enumerate the 2^K − 1 candidate supports, solve each face's KKT system, keep the best
  kFrankWolfe,  ///< Frank–Wolfe with exact line search (Sener & Koltun, Algorithm 2)
};
inline constexpr EnumNames<MinNormSolver, 3> kMinNormSolverNames{
    {{{MinNormSolver::kAuto, "auto"}, {MinNormSolver::kExact, "exact"}, {MinNormSolver::kFrankWolfe, "frank_wolfe"}}}};

/// Options for MinNormWeighting.
struct MinNormWeightingOptions {
  /* implicit */ MinNormWeightingOptions(std::vector<torch::Tensor> shared_parameters)  // NOLINT
      : shared_parameters_(std::move(shared_parameters)) {}

  /// θ_sh, the parameters shared by all losses (e.g. the student's trunk);
  /// the gradients g_k = ∇_θsh L_k are taken with respect to these. Not owned
  /// (not registered); a clone() still points at the same tensors.
  TORCH_ARG(std::vector<torch::Tensor>, shared_parameters);
  TORCH_ARG(MinNormSolver, solver) = MinNormSolver::kAuto;
  /// Frank–Wolfe: at most this many iterations.
  TORCH_ARG(int64_t, max_iterations) = 250;
  /// Frank–Wolfe: stop when the step changes α by less than this (L1).
  TORCH_ARG(double, tolerance) = 1e-10;
};

namespace functional {

/// argmin_{α ∈ Δ^{K−1}} αᵀ G α for a K×K Gram matrix `gram` (G_ij = g_i·g_j,
/// symmetric positive semi-definite), returned as a [K] float64 CPU tensor.
///
/// - K = 1: α = (1).
/// - K = 2: α₁ = clamp((G₂₂ − G₁₂)/(G₁₁ + G₂₂ − 2G₁₂), 0, 1), α₂ = 1 − α₁
///   (α = (½, ½) when g₁ = g₂, where every α is optimal).
/// - kExact: for every non-empty support S, solve the equality-constrained
///   problem min αᵀGα s.t. Σ_S α = 1 through its KKT system
///   [2G_SS 1; 1ᵀ 0]·[α; μ] = [0; 1] (Eigen, full-pivot LU; singular faces,
///   i.e. affinely dependent gradients, are skipped — a non-singular optimal
///   face always exists); keep feasible (α ≥ 0) solutions; return the one
///   with the smallest αᵀGα. Exact up to rounding; 2^K solves.
/// - kFrankWolfe: start from the best pair (K = 2 closed form over all pairs),
///   then repeat: t = argmin_r (Gα)_r, exact line search
///   γ = clamp((αᵀGα − (Gα)_t)/(αᵀGα + G_tt − 2(Gα)_t), 0, 1),
///   α ← (1 − γ)α + γ·e_t, until ‖Δα‖₁ < tolerance or max_iterations.
///
/// kd::Error (kShape) when `gram` is not square; (kValue) when it is not finite.
///
/// Example: `auto alpha = kd::functional::min_norm_weights(torch::tensor({{1.0, 0.0}, {0.0, 4.0}}));   // (0.8, 0.2)`
torch::Tensor min_norm_weights(const torch::Tensor& gram, MinNormSolver solver = MinNormSolver::kAuto,
                               int64_t max_iterations = 250, double tolerance = 1e-10);

}  // namespace functional

/// MGDA-style weights (O. Sener, V. Koltun, "Multi-Task Learning as
/// Multi-Objective Optimization", NeurIPS 2018): each step, with
/// g_k = ∇_θsh L_k over the shared parameters (flattened and concatenated),
///
///   α = argmin_{α ∈ simplex} ‖Σ_k α_k·g_k‖²  (functional::min_norm_weights on G = [g_i·g_j]),
///   L = Σ_k α_k·L_k   with α detached,
///
/// so −∇L is a common descent direction for all losses (or 0 at a Pareto-
/// stationary point). The weights sum to 1. The gradients come from
/// `torch::autograd::grad(L_k, θ_sh, retain_graph=true)` per loss — K extra
/// backward passes through the shared part each step; a parameter a loss
/// does not reach contributes 0. The Gram matrix is accumulated in float64.
///
/// When gradients cannot be taken (grad mode off, or no loss requires grad,
/// e.g. evaluation) the weights of the last training step are reused, or
/// 1/K before any. Weights reported: α_k. Extra part: "min_norm" = ‖Σ α_k g_k‖².
///
/// Example:
/// ```
/// kd::WeightedSum total({{"kl", kl}, {"ce", ce}},
///                       kd::MinNormWeighting(kd::MinNormWeightingOptions(student->trunk->parameters())));
/// ```
class MinNormWeightingImpl : public torch::nn::Cloneable<MinNormWeightingImpl>, public WeightingPolicy {
 public:
  explicit MinNormWeightingImpl(MinNormWeightingOptions options);
  void reset() override;

  WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                          const WeightingContext& context) override;

  /// The Gram matrix G_ij = g_i·g_j [K, K] (float64, CPU) of `losses` over the shared parameters.
  torch::Tensor gram(const std::vector<torch::Tensor>& losses) const;

  MinNormWeightingOptions options;

 private:
  torch::Tensor last_alpha_;
};
TORCH_MODULE(MinNormWeighting);

}  // namespace kd
