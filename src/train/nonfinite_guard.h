#pragma once
// Private to src/train: the one place that applies StagedTrainerOptions::nonfinite to a step.

#include <cstdint>
#include <functional>
#include <string>

#include "kd/train/checkpoint.h"
#include "kd/train/staged_trainer.h"

namespace kd::detail {

/// Decides what a step's update becomes once its loss and gradient norm are known. Losses only report
/// values; this applies the policy, counts the steps in TrainingState and writes the warnings.
class NonFiniteGuard {
 public:
  enum class Action {
    kApply,     ///< finite: take the optimizer step
    kSkip,      ///< drop the update (kLowerLr, and kRollback before the first checkpoint, also lowered lr_scale)
    kRollback,  ///< drop the update and return to the newest checkpoint
  };

  NonFiniteGuard(NonFinitePolicy policy, double lr_backoff, int64_t max_consecutive);

  /// A finite step resets the count of non-finite steps in a row and returns kApply. A non-finite one is
  /// counted in `state.nonfinite_steps`; then policy kStop, or `max_consecutive` of them in a row, throws
  /// kd::Error with `describe()` (the step, its loss, norm and parts) and the newest checkpoint of
  /// `checkpoints` (may be null); otherwise it returns kRollback or kSkip as the policy says.
  Action check(bool finite, const std::function<std::string()>& describe, const CheckpointManager* checkpoints,
               TrainingState& state);

 private:
  NonFinitePolicy policy_;
  double lr_backoff_;
  int64_t max_consecutive_;
  int64_t consecutive_ = 0;  // survives rollbacks: they do not make the data finite
};

}  // namespace kd::detail
