#pragma once
/// \file
/// Progress on the console: a line every N steps with loss parts, lr, speed and ETA.

#include <chrono>

#include "kd/train/callback.h"

namespace kd {

/// Shows training progress. When stdout is a terminal: a progress bar redrawn
/// in place (at most 10 times a second) with step/total, loss, speed and ETA.
/// Otherwise (logs, CI): a spdlog line every `every` optimizer steps and at
/// each stage's last step, with the loss parts and lr as well. Evaluations are
/// logged as they come. At the end of `fit` it prints `summary_table`.
///
/// Example: `trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));`
/// The run's result as a small table: one row per stage with the stage's last
/// evaluation (accuracy, macro-F1, NLL, perplexity, bits per byte, token accuracy:
/// the columns some evaluation reported, other metrics after them), then the
/// steps run and how the run ended. Stages that never evaluated have no row.
///
/// Example: `std::puts(kd::summary_table(trainer.fit(data)).c_str());`
/// ```
/// stage          step  accuracy  macro_f1
/// features        430    0.7812    0.7701
/// logits         1290    0.8862    0.8859
/// 1290 steps; finished
/// ```
std::string summary_table(const TrainSummary& summary);

class ConsoleLogger : public Callback {
 public:
  explicit ConsoleLogger(int64_t every = 100);
  void on_stage_begin(const Stage& stage, const StepInfo& step) override;
  void on_step_end(const StepReport& report) override;
  void on_stage_end(const Stage& stage, const StepInfo& step) override;
  void on_eval(const EvalResult& result) override;
  void on_fit_begin(const FitInfo& info) override;
  void on_fit_end(const TrainSummary& summary) override;

 private:
  int64_t every_;
  std::string stage_;
  int64_t first_step_ = 0;
  bool tty_;
  bool mid_line_ = false;  // a progress bar is on screen without its newline
  std::chrono::steady_clock::time_point stage_start_, last_draw_;
};

}  // namespace kd
