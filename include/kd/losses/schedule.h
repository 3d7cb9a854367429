#pragma once
/// \file
/// A scalar that changes with training progress (weights, temperatures, λ).

#include <string>
#include <vector>

#include "kd/core/enum_names.h"

namespace kd {

/// A value as a function of progress p ∈ [0, 1] through the current stage.
///
/// - constant(v):                 v
/// - linear(a, b):                a + (b − a)·p
/// - cosine(a, b):                b + (a − b)·(1 + cos(π·p))/2
/// - step(a, γ, {m1, m2, ...}):   a·γ^(number of milestones m_i ≤ p)
///
/// Example: the documented α = 0.7·(1 − progress) is `kd::Schedule::linear(0.7, 0.0)`;
/// R1's λ from 0.8 early to 0.3 late is `kd::Schedule::linear(0.8, 0.3)`.
class Schedule {
 public:
  enum class Kind { kConstant, kLinear, kCosine, kStep };

  Schedule() : Schedule(Kind::kConstant, 0.0, 0.0) {}
  static Schedule constant(double value) { return Schedule(Kind::kConstant, value, value); }
  static Schedule linear(double start, double end) { return Schedule(Kind::kLinear, start, end); }
  static Schedule cosine(double start, double end) { return Schedule(Kind::kCosine, start, end); }
  static Schedule step(double start, double gamma, std::vector<double> milestones);
  /// linear(start, end) or cosine(start, end) by `kind` (constant: start); kd::Error (kValue) for kStep,
  /// which needs milestones. Example: `kd::Schedule::ramp(*kd::kRampKindNames.parse("cosine"), 0.8, 0.3)`.
  static Schedule ramp(Kind kind, double start, double end);

  /// The value at `progress` (clamped to [0, 1]).
  double operator()(double progress) const;
  /// E.g. "linear(0.7 -> 0)" for logs.
  std::string describe() const;

  Kind kind() const { return kind_; }
  double start() const { return start_; }
  double end() const { return end_; }

 private:
  Schedule(Kind kind, double start, double end) : kind_(kind), start_(start), end_(end) {}
  Kind kind_;
  double start_;
  double end_;   // for kStep: gamma
  std::vector<double> milestones_;
};

/// The schedules a config names between two values: a stage weight's {"schedule": ..., "start", "end"},
/// gradient_matching's "lambda_schedule". (A constant is a plain number there; step needs milestones.)
inline constexpr EnumNames<Schedule::Kind, 2> kRampKindNames{
    {{{Schedule::Kind::kLinear, "linear"}, {Schedule::Kind::kCosine, "cosine"}}}};

}  // namespace kd
