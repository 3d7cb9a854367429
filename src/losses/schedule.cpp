#include "kd/losses/schedule.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd {

Schedule Schedule::step(double start, double gamma, std::vector<double> milestones) {
  for (double m : milestones) {
    if (!(m >= 0.0 && m <= 1.0)) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("Schedule::step milestones are progress values in [0, 1], got {}", m));
    }
  }
  std::sort(milestones.begin(), milestones.end());
  Schedule s(Kind::kStep, start, gamma);
  s.milestones_ = std::move(milestones);
  return s;
}

Schedule Schedule::ramp(Kind kind, double start, double end) {
  switch (kind) {
    case Kind::kConstant: return constant(start);
    case Kind::kLinear: return linear(start, end);
    case Kind::kCosine: return cosine(start, end);
    case Kind::kStep: break;
  }
  throw Error(ErrorCategory::kValue, "Schedule::ramp: a step schedule needs milestones; use Schedule::step");
}

double Schedule::operator()(double progress) const {
  const double p = std::clamp(progress, 0.0, 1.0);
  switch (kind_) {
    case Kind::kConstant: return start_;
    case Kind::kLinear: return start_ + (end_ - start_) * p;
    case Kind::kCosine: return end_ + (start_ - end_) * 0.5 * (1.0 + std::cos(M_PI * p));
    case Kind::kStep: {
      const auto passed = std::upper_bound(milestones_.begin(), milestones_.end(), p) - milestones_.begin();
      return start_ * std::pow(end_, static_cast<double>(passed));
    }
  }
  return start_;
}

std::string Schedule::describe() const {
  switch (kind_) {
    case Kind::kConstant: return fmt::format("constant({})", start_);
    case Kind::kLinear: return fmt::format("linear({} -> {})", start_, end_);
    case Kind::kCosine: return fmt::format("cosine({} -> {})", start_, end_);
    case Kind::kStep: return fmt::format("step({}, x{} at [{}])", start_, end_, fmt::join(milestones_, ", "));
  }
  return "?";
}

}  // namespace kd
