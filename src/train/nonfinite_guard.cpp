#include "nonfinite_guard.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"

namespace kd::detail {

NonFiniteGuard::NonFiniteGuard(NonFinitePolicy policy, double lr_backoff, int64_t max_consecutive)
    : policy_(policy), lr_backoff_(lr_backoff), max_consecutive_(max_consecutive) {}

NonFiniteGuard::Action NonFiniteGuard::check(bool finite, const std::function<std::string()>& describe,
                                             const CheckpointManager* checkpoints, TrainingState& state) {
  if (finite) {
    consecutive_ = 0;
    return Action::kApply;
  }
  ++state.nonfinite_steps;
  ++consecutive_;
  const std::string what = describe();
  const auto last = checkpoints ? checkpoints->latest() : std::nullopt;
  const std::string where =
      last ? fmt::format("the newest checkpoint is {}", *last) : std::string("no checkpoint has been written");
  if (policy_ == NonFinitePolicy::kStop) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{}; stopping (nonfinite policy 'stop'; the update was not applied; {}). Lower the "
                            "learning rate, or choose the 'skip', 'lower_lr' or 'rollback' policy",
                            what, where));
  }
  if (consecutive_ >= max_consecutive_) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{}; {} steps in a row were non-finite, stopping (policy '{}'; {}). Check the data and "
                            "lower the learning rate",
                            what, consecutive_, kNonFinitePolicyNames.name(policy_), where));
  }
  if (policy_ == NonFinitePolicy::kRollback && last) {
    spdlog::warn("{}: rolling back", what);
    return Action::kRollback;
  }
  if (policy_ != NonFinitePolicy::kSkipStep) state.lr_scale *= lr_backoff_;
  spdlog::warn("{}: update skipped{}", what,
               policy_ == NonFinitePolicy::kSkipStep ? std::string()
                                                      : fmt::format(", learning rates now x{:.4g}", state.lr_scale));
  return Action::kSkip;
}

}  // namespace kd::detail
