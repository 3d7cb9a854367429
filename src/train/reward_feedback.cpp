#include "kd/train/reward_feedback.h"

#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd {

RewardFeedback::RewardFeedback(RewardWeighting policy, RewardFeedbackOptions options_)
    : options(std::move(options_)),
      policy_(std::move(policy)),
      last_reward_(std::numeric_limits<double>::quiet_NaN()),
      last_advantage_(std::numeric_limits<double>::quiet_NaN()) {
  if (policy_.is_empty()) {
    throw Error(ErrorCategory::kConfig, "RewardFeedback: the RewardWeighting policy is empty (a null holder)");
  }
  if (options.metric().empty()) {
    throw Error(ErrorCategory::kConfig, "RewardFeedbackOptions.metric is empty; name an evaluation metric, e.g. \"accuracy\"");
  }
  if (!std::isfinite(options.scale()) || options.scale() == 0.0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("RewardFeedbackOptions.scale must be finite and non-zero, got {}", options.scale()));
  }
}

void RewardFeedback::on_eval(const EvalResult& result) {
  if (!options.stage().empty() && result.stage != options.stage()) return;
  const auto it = result.metrics.find(options.metric());
  if (it == result.metrics.end()) {
    std::vector<std::string> names;
    for (const auto& [name, _] : result.metrics) names.push_back(name);
    const auto best = closest_name(options.metric(), names);
    throw Error(ErrorCategory::kConfig,
                fmt::format("RewardFeedback: the evaluation of stage '{}' at step {} has no metric '{}'; {}it has: {}",
                            result.stage, result.global_step, options.metric(),
                            best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(names, ", ")));
  }
  if (!std::isfinite(it->second)) {
    throw Error(ErrorCategory::kValue, fmt::format("RewardFeedback: metric '{}' is {} at step {}", options.metric(),
                                                   it->second, result.global_step));
  }
  if (!policy_->has_pending_action()) return;
  last_reward_ = options.scale() * it->second;
  last_advantage_ = policy_->update(last_reward_);
  ++updates_;
}

}  // namespace kd
