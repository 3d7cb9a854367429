#pragma once
/// \file
/// Evaluation metrics fed back to a kd::RewardWeighting policy as its reward.

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include "kd/losses/weighting/reward.h"
#include "kd/train/callback.h"

namespace kd {

/// Options for RewardFeedback.
struct RewardFeedbackOptions {
  /* implicit */ RewardFeedbackOptions(std::string metric) : metric_(std::move(metric)) {}  // NOLINT

  /// The EvalResult metric that is the reward, e.g. "accuracy" or "macro_f1".
  TORCH_ARG(std::string, metric);
  /// r = scale·metric; a negative scale makes a lower-is-better metric a reward.
  TORCH_ARG(double, scale) = 1.0;
  /// Only evaluations of the stage with this name count ("" = every stage).
  TORCH_ARG(std::string, stage) = "";
};

/// The wiring between a trainer's evaluations and a reward-driven weighting:
/// on each evaluation (kd::Callback::on_eval) it reads the validation metric
/// m = `result.metrics[metric]` and calls
///
///   policy->update(r),   r = scale·m,
///
/// so the REINFORCE rule of kd::RewardWeighting moves θ by η·(r − b)·ε/σ for
/// the pending action ε: a loss whose weight the action raised (ε_k > 0) gains
/// weight when the validation metric beat the baseline b, and loses weight
/// when it fell short.
///
/// Build the policy with `hold_action(true)` when evaluations come every N > 1
/// steps: the action is then the weights used for all N steps the reward
/// judges. An evaluation with no pending action (none of the policy's training
/// steps ran since the last update — e.g. a stage that does not use it) is
/// skipped. A missing metric throws kd::Error (kConfig) listing the metrics
/// the evaluation has; a non-finite one throws kd::Error (kValue).
///
/// Example:
/// ```
/// kd::RewardWeighting policy(kd::RewardWeightingOptions(2).hold_action(true).lr(0.5));
/// kd::WeightedSum total({{"kl", kl}, {"ce", ce}}, policy);
/// kd::StagedTrainer trainer(student, teacher, {kd::Stage("kd", torch::nn::AnyModule(total)).epochs(3).eval_every(50)},
///                           kd::StagedTrainerOptions().num_classes(10));
/// auto feedback = std::make_shared<kd::RewardFeedback>(policy, kd::RewardFeedbackOptions("accuracy"));
/// trainer.add_callback(feedback);
/// trainer.fit(train, &validation);   // θ updated after every evaluation; "w.kl", "w.ce" logged each step
/// ```
class RewardFeedback : public Callback {
 public:
  RewardFeedback(RewardWeighting policy, RewardFeedbackOptions options);

  void on_eval(const EvalResult& result) override;

  /// Updates applied so far, and the last reward and advantage (NaN before the first).
  int64_t updates() const noexcept { return updates_; }
  double last_reward() const noexcept { return last_reward_; }
  double last_advantage() const noexcept { return last_advantage_; }

  RewardFeedbackOptions options;

 private:
  RewardWeighting policy_;
  int64_t updates_ = 0;
  double last_reward_;
  double last_advantage_;
};

}  // namespace kd
