#pragma once
/// \file
/// Learning-rate schedule: linear warmup, then cosine annealing to a floor.

#include <vector>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

namespace kd {

/// Options for WarmupCosine.
struct WarmupCosineOptions {
  WarmupCosineOptions(double base_lr, int64_t total_steps) : base_lr_(base_lr), total_steps_(total_steps) {}
  TORCH_ARG(double, base_lr);
  TORCH_ARG(int64_t, total_steps);
  TORCH_ARG(int64_t, warmup_steps) = 0;
  /// Warmup starts at base_lr · start_factor (PyTorch LinearLR's start_factor).
  TORCH_ARG(double, start_factor) = 1.0 / 3.0;
  /// The floor the cosine reaches at total_steps (PyTorch CosineAnnealingLR's eta_min).
  TORCH_ARG(double, min_lr) = 0.0;
};

/// The learning rate after `step` optimizer steps, equal to PyTorch's
/// `SequentialLR([LinearLR(start_factor, total_iters=W), CosineAnnealingLR(T_max=N−W, eta_min)], milestones=[W])`:
///
///   step < W:  lr = base · (f + (1 − f) · step / W)
///   step ≥ W:  lr = min + (base − min) · (1 + cos(π · (step − W) / (N − W))) / 2
///
/// Hand-written (closed form) rather than LibTorch's StepLR, whose C++ port
/// steps one behind Python. Beyond N the rate stays at `min_lr`.
///
/// Example (the documented 3e-5 → 1e-6 style):
/// ```
/// kd::WarmupCosine lr(kd::WarmupCosineOptions(3e-5, 10000).warmup_steps(500).min_lr(1e-6));
/// lr.apply(optimizer, step);   // before optimizer.step()
/// ```
class WarmupCosine {
 public:
  explicit WarmupCosine(WarmupCosineOptions options);
  double at(int64_t step) const;
  /// at(step) / base_lr: the multiplier the schedule applies to any base rate.
  double factor(int64_t step) const;
  /// Sets parameter group g's lr to group_base_lrs[g] · factor(step); with
  /// `group_base_lrs` empty, every group gets at(step).
  void apply(torch::optim::Optimizer& optimizer, int64_t step,
             const std::vector<double>& group_base_lrs = {}) const;

  const WarmupCosineOptions& options() const { return options_; }

 private:
  WarmupCosineOptions options_;
};

}  // namespace kd
