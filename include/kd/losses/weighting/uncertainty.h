#pragma once
/// \file
/// Learned uncertainty weighting of several losses (Kendall, Gal & Cipolla, 2018).

#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/weighting/policy.h"

namespace kd {

/// Options for UncertaintyWeighting.
struct UncertaintyWeightingOptions {
  /* implicit */ UncertaintyWeightingOptions(int64_t num_losses) : num_losses_(num_losses) {}  // NOLINT

  /// K, the number of losses combined (≥ 1); one learned log-variance each.
  TORCH_ARG(int64_t, num_losses);
  /// Initial s_k = log σ_k² for every loss; the default 0 starts every weight at exp(0) = 1.
  TORCH_ARG(double, init_log_var) = 0.0;
};

namespace functional {

/// Σ_k exp(−s_k)·L_k + s_k for `losses` [K] and `log_vars` s [K] (same dtype and device).
///
/// Example: `auto l = kd::functional::uncertainty_weighted(torch::stack({l_kl, l_ce}), s);`
torch::Tensor uncertainty_weighted(const torch::Tensor& losses, const torch::Tensor& log_vars);

}  // namespace functional

/// Homoscedastic-uncertainty weighting (A. Kendall, Y. Gal, R. Cipolla,
/// "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
/// and Semantics", CVPR 2018):
///
///   L = Σ_k exp(−s_k)·L_k + s_k,   s_k = log σ_k², learned.
///
/// Variant: the paper's per-task objective is (1/2σ²)·L + log σ for a
/// Gaussian likelihood (eq. 7) and ≈ (1/σ²)·L + log σ for a softmax one
/// (eq. 10). We use, for every loss alike, twice the Gaussian form written in
/// s = log σ² for numerical stability (the form of the authors' follow-up
/// code and most re-implementations): 2·[(1/2σ²)·L + log σ] = exp(−s)·L + s.
/// For fixed L_k > 0 the minimum over s_k is at s_k = log L_k (weight 1/L_k),
/// so each loss is pulled towards a contribution of 1; L_k ≤ 0 has no finite
/// optimum (s_k → −∞), so use it only with non-negative losses.
///
/// Registers the parameter "log_vars" [K] (train it with the student: an
/// optimizer over `WeightedSum::parameters()` sees it). Weights reported
/// ("w.<name>" in a WeightedSum): exp(−s_k). Extra parts: "log_var.<name>" = s_k.
///
/// Example:
/// ```
/// kd::WeightedSum total({{"kl", kl}, {"ce", ce}}, kd::UncertaintyWeighting(2));
/// torch::optim::Adam opt(total->parameters(), 1e-3);   // student parameters added separately
/// ```
class UncertaintyWeightingImpl : public torch::nn::Cloneable<UncertaintyWeightingImpl>, public WeightingPolicy {
 public:
  explicit UncertaintyWeightingImpl(UncertaintyWeightingOptions options);
  void reset() override;

  WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                          const WeightingContext& context) override;
  int64_t num_losses() const override { return options.num_losses(); }

  UncertaintyWeightingOptions options;
  /// s = log σ² [K], a registered parameter.
  torch::Tensor log_vars;
};
TORCH_MODULE(UncertaintyWeighting);

}  // namespace kd
