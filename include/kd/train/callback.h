#pragma once
/// \file
/// The documented way to extend the training loop.

#include <map>
#include <string>

#include "kd/losses/distill_batch.h"

namespace kd {

struct Stage;

/// What an evaluation measured: metric name -> value (e.g. "accuracy", "macro_f1", "f1.3").
struct EvalResult {
  std::string stage;
  int64_t global_step = 0;
  std::map<std::string, double> metrics;
};

/// What one optimizer step did, as a callback sees it.
struct StepReport {
  StepInfo step;
  LossResult loss;          ///< parts as the loss reported them (averaged over accumulation micro-batches)
  double lr = 0.0;
  double grad_norm = 0.0;   ///< global L2 norm before clipping
  double samples_per_s = 0.0;
};

/// Override what you need; every hook does nothing by default. Callbacks run
/// on the training thread, in the order they were added.
///
/// Example:
/// ```
/// struct StopAtLoss : kd::Callback {
///   void on_step_end(const kd::StepReport& r) override { if (r.loss.total.item<double>() < 0.1) ...; }
/// };
/// trainer.add_callback(std::make_shared<StopAtLoss>());
/// ```
class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_stage_begin(const Stage& stage, const StepInfo& step) {}
  virtual void on_stage_end(const Stage& stage, const StepInfo& step) {}
  virtual void on_step_end(const StepReport& report) {}
  virtual void on_eval(const EvalResult& result) {}
};

}  // namespace kd
