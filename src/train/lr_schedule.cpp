#include "kd/train/lr_schedule.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/optim.h>

#include "kd/core/error.h"

namespace kd {

WarmupCosine::WarmupCosine(WarmupCosineOptions options) : options_(options) {
  const auto& o = options_;
  if (!(o.base_lr() > 0) || o.total_steps() <= 0 || o.warmup_steps() < 0 || o.warmup_steps() >= o.total_steps() ||
      !(o.start_factor() > 0 && o.start_factor() <= 1) || !(o.min_lr() >= 0 && o.min_lr() <= o.base_lr())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("WarmupCosine: need base_lr > 0 (got {}), total_steps > 0 (got {}), "
                            "0 <= warmup_steps < total_steps (got {}), start_factor in (0, 1] (got {}), "
                            "0 <= min_lr <= base_lr (got {})",
                            o.base_lr(), o.total_steps(), o.warmup_steps(), o.start_factor(), o.min_lr()));
  }
}

double WarmupCosine::at(int64_t step) const {
  const auto& o = options_;
  const int64_t w = o.warmup_steps();
  if (step < w) {
    return o.base_lr() * (o.start_factor() + (1.0 - o.start_factor()) * double(step) / double(w));
  }
  const double t = std::min<double>(step - w, o.total_steps() - w);
  return o.min_lr() + (o.base_lr() - o.min_lr()) * 0.5 * (1.0 + std::cos(M_PI * t / double(o.total_steps() - w)));
}

double WarmupCosine::factor(int64_t step) const { return at(step) / options_.base_lr(); }

void WarmupCosine::apply(torch::optim::Optimizer& optimizer, int64_t step,
                         const std::vector<double>& group_base_lrs) const {
  auto& groups = optimizer.param_groups();
  if (!group_base_lrs.empty() && group_base_lrs.size() != groups.size()) {
    throw Error(ErrorCategory::kValue, fmt::format("WarmupCosine::apply: {} base lrs for {} parameter groups",
                                                   group_base_lrs.size(), groups.size()));
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    const double lr = group_base_lrs.empty() ? at(step) : group_base_lrs[g] * factor(step);
    groups[g].options().set_lr(lr);
  }
}

}  // namespace kd
