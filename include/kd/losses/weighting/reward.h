#pragma once
/// \file
/// Loss weights learned from a reward by a policy-gradient (REINFORCE) rule.

#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/weighting/policy.h"

namespace kd {

/// Options for RewardWeighting.
struct RewardWeightingOptions {
  /* implicit */ RewardWeightingOptions(int64_t num_losses) : num_losses_(num_losses) {}  // NOLINT

  /// K, the number of losses (≥ 1).
  TORCH_ARG(int64_t, num_losses);
  /// Step size η of the θ update (> 0).
  TORCH_ARG(double, lr) = 0.05;
  /// σ, the standard deviation of the exploration noise on the logits (> 0).
  TORCH_ARG(double, noise_std) = 0.1;
  /// β of the baseline's moving average b ← β·b + (1 − β)·r, in [0, 1).
  TORCH_ARG(double, baseline_momentum) = 0.9;
  /// S = Σ_k w_k (> 0); 0 means K, so θ = 0 gives every loss weight 1.
  TORCH_ARG(double, scale) = 0.0;
  /// θ₀, the initial logits (K values); empty means zeros.
  TORCH_ARG(std::vector<double>, init_logits) = {};
  /// b₀; unset means "the first reward" (the first update then has advantage 0).
  TORCH_ARG(std::optional<double>, initial_baseline) = std::nullopt;
};

/// Loss weights from a Gaussian policy over logits, trained by REINFORCE on a
/// scalar reward the caller supplies (e.g. minus a validation loss, or an
/// accuracy, measured after the step that used the weights).
///
/// Action (one per optimizer step): the logits
///
///   z = θ + σ·ε,  ε ~ N(0, I_K),   weights w = S·softmax(z),
///
/// sampled the first time `combine` runs in training mode for a new
/// `step.global_step` (so micro-batches of one accumulated step share it) or
/// after an update. In eval mode the weights are the noise-free S·softmax(θ)
/// and nothing is recorded. The loss is Σ_k w_k·L_k with w detached (no
/// gradient flows into θ through the loss).
///
/// Update, `update(r)` for the most recent action (z, ε):
///
///   log π(z | θ) = −‖z − θ‖²/(2σ²) + const  ⇒  ∇_θ log π(z | θ) = (z − θ)/σ² = ε/σ
///   A = r − b                                   (advantage against the baseline)
///   θ ← θ + η·A·ε/σ                             (REINFORCE, Williams 1992)
///   b ← β·b + (1 − β)·r                         (after computing A)
///
/// with b = r before the first update unless `initial_baseline` is set. The
/// action is consumed: calling update() again before a new action throws
/// kd::Error (kState). A non-finite reward throws kd::Error (kValue).
///
/// Buffers (saved in checkpoints): "theta" [K], "baseline" [], "updates" [] (count).
/// Extra parts: "theta.<name>" = θ_k, "baseline" = b.
///
/// Example:
/// ```
/// kd::RewardWeighting policy(kd::RewardWeightingOptions(2).lr(0.1).noise_std(0.2));
/// kd::WeightedSum total({{"kl", kl}, {"ce", ce}}, policy);
/// ... loss = total->forward(batch); loss.total.backward(); opt.step();
/// policy->update(-validation_loss);   // after each optimizer step
/// ```
class RewardWeightingImpl : public torch::nn::Cloneable<RewardWeightingImpl>, public WeightingPolicy {
 public:
  explicit RewardWeightingImpl(RewardWeightingOptions options);
  void reset() override;

  WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                          const StepInfo& step) override;
  int64_t num_losses() const override { return options.num_losses(); }

  /// Applies the REINFORCE rule above for the pending action; returns the advantage A.
  double update(double reward);

  /// S·softmax(θ): the mean action's weights [K] (detached).
  torch::Tensor mean_weights() const;
  /// Whether an action awaits its update.
  bool has_pending_action() const noexcept { return noise_.defined(); }
  /// ε of the pending action [K] (undefined when none).
  const torch::Tensor& pending_noise() const noexcept { return noise_; }
  /// The current baseline b (NaN before the first update without initial_baseline).
  double baseline_value() const;

  RewardWeightingOptions options;
  torch::Tensor theta;      ///< θ [K], buffer
  torch::Tensor baseline;   ///< b [], buffer
  torch::Tensor updates;    ///< number of updates so far [], int64 buffer

 private:
  double scale() const;
  torch::Tensor noise_;          // ε of the pending action
  int64_t action_step_ = -1;     // global_step the pending action was sampled for
};
TORCH_MODULE(RewardWeighting);

}  // namespace kd
