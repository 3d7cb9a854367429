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
  /// Keep one sampled action until update() instead of sampling a new one for
  /// every optimizer step. Use it when the reward judges many steps at once —
  /// an evaluation every N steps fed back by kd::RewardFeedback — so that the
  /// reward and the action it is credited to are the same N steps' weights.
  TORCH_ARG(bool, hold_action) = false;
};

/// Loss weights from a Gaussian policy over logits, trained by REINFORCE on a
/// scalar reward the caller supplies (e.g. minus a validation loss, or an
/// accuracy, measured after the step that used the weights).
///
/// Action (one per optimizer step): the logits
///
///   z = θ + σ·ε,  ε ~ N(0, I_K),   weights w = S·softmax(z),
///
/// sampled the first time `combine` runs in training mode when no action is
/// pending, and — unless `hold_action` — for every new `step.global_step` (so
/// micro-batches of one accumulated step share it). With `hold_action` one
/// action lasts until update(). In eval mode the weights are the noise-free
/// S·softmax(θ) and nothing is recorded. The loss is Σ_k w_k·L_k with w
/// detached (no gradient flows into θ through the loss).
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
/// Buffers (saved in checkpoints, so a resumed run keeps its pending action):
/// "theta" [K], "baseline" [], "updates" [] (count), "noise" [K] (ε of the
/// pending action), "action_step" [] (the global step it was sampled at; −1:
/// none pending). Extra parts: "theta.<name>" = θ_k, "baseline" = b.
///
/// Example:
/// ```
/// kd::RewardWeighting policy(kd::RewardWeightingOptions(2).lr(0.1).noise_std(0.2));
/// kd::WeightedSum total({{"kl", kl}, {"ce", ce}}, policy);
/// ... loss = total->forward(batch); loss.total.backward(); opt.step();
/// policy->update(-validation_loss);   // after each optimizer step
/// // or, in a StagedTrainer, the reward from each evaluation (see kd::RewardFeedback):
/// kd::RewardWeighting held(kd::RewardWeightingOptions(2).hold_action(true));
/// trainer.add_callback(std::make_shared<kd::RewardFeedback>(held, kd::RewardFeedbackOptions("accuracy")));
/// ```
class RewardWeightingImpl : public torch::nn::Cloneable<RewardWeightingImpl>, public WeightingPolicy {
 public:
  explicit RewardWeightingImpl(RewardWeightingOptions options);
  void reset() override;

  WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                          const WeightingContext& context) override;
  int64_t num_losses() const override { return options.num_losses(); }

  /// Applies the REINFORCE rule above for the pending action; returns the advantage A.
  double update(double reward);

  /// S·softmax(θ): the mean action's weights [K] (detached).
  torch::Tensor mean_weights() const;
  /// Whether an action awaits its update.
  bool has_pending_action() const;
  /// ε of the pending action [K] (a copy; undefined when none).
  torch::Tensor pending_noise() const;
  /// The current baseline b (NaN before the first update without initial_baseline).
  double baseline_value() const;

  RewardWeightingOptions options;
  torch::Tensor theta;        ///< θ [K], buffer
  torch::Tensor baseline;     ///< b [], buffer
  torch::Tensor updates;      ///< number of updates so far [], int64 buffer
  torch::Tensor noise;        ///< ε of the pending action [K], buffer (stale when none is pending)
  torch::Tensor action_step;  ///< global step of the pending action [], int64 buffer; −1: none

 private:
  double scale() const;
};
TORCH_MODULE(RewardWeighting);

}  // namespace kd
