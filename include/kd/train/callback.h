#pragma once
/// \file
/// The documented way to extend the training loop.

#include <algorithm>
#include <map>
#include <string>
#include <vector>

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
  /// The loss or a gradient was NaN/Inf, so the optimizer did not step (see NonFinitePolicy).
  bool skipped_nonfinite = false;
  int64_t nonfinite_total = 0;  ///< steps with a non-finite loss or gradient so far in the run
  /// Data-parallel runs: wall seconds of this step spent blocked in collectives (buffers, gradient
  /// buckets, loss parts, the stop flag; a bucket sent during backward counts only its wait);
  /// 0 for one process.
  double communication_s = 0.0;
};

/// Sizes of the models taking part, given to callbacks before the first step.
struct FitInfo {
  int64_t student_parameters = 0;
  int64_t student_bytes = 0;       ///< parameters + buffers, as kd::parameter_bytes counts them
  int64_t teacher_parameters = 0;  ///< 0 without a live teacher (cache, self-distillation)
  int64_t teacher_bytes = 0;
  int64_t train_examples = 0;
  int64_t stages = 0;
  int64_t total_steps = 0;         ///< optimizer steps of every stage together, as planned
  bool resumed = false;
  int64_t resumed_from_step = 0;
};

/// What fit() returns, and what callbacks see when it ends.
struct TrainSummary {
  int64_t steps = 0;
  std::vector<EvalResult> evaluations;
  bool resumed = false;
  int64_t resumed_from_step = 0;
  /// Non-zero when a stop request (kd::StopSignal) ended the run early: the signal's number. The
  /// run stopped after optimizer step `steps` and, with a checkpoint_dir, saved a checkpoint there.
  int stopped_by_signal = 0;
  int64_t nonfinite_steps = 0;  ///< steps whose update was dropped for a NaN/Inf loss or gradient
  int64_t rollbacks = 0;        ///< returns to the last checkpoint (NonFinitePolicy::kRollback)
  double lr_scale = 1.0;        ///< what non-finite steps left of the configured learning rates
};

/// Each stage's last evaluation in `summary`, stages in the order they first evaluated: the run's
/// result, as kd::summary_table prints it and MetricsLog's `fit_end` line reports it ("final").
inline std::vector<const EvalResult*> last_evaluation_per_stage(const TrainSummary& summary) {
  std::vector<const EvalResult*> last;
  for (const auto& e : summary.evaluations) {
    auto it = std::find_if(last.begin(), last.end(), [&](const EvalResult* r) { return r->stage == e.stage; });
    if (it == last.end()) last.push_back(&e); else *it = &e;
  }
  return last;
}

/// Override what you need; every hook does nothing by default. Callbacks run
/// on the training thread, in the order they were added; in a data-parallel run on rank 0 only,
/// with losses and evaluations already reduced over the ranks.
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
  /// Before the first step (after a resume has restored its checkpoint).
  virtual void on_fit_begin(const FitInfo& info) {}
  /// When fit() returns, normally or stopped by a signal (not when it throws).
  virtual void on_fit_end(const TrainSummary& summary) {}
};

}  // namespace kd
