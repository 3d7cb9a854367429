#pragma once
/// \file
/// Progress on the console: a line every N steps with loss parts, lr, speed and ETA.

#include <chrono>
#include <string>

#include "kd/train/callback.h"

namespace kd {

/// The duration `seconds` as h:mm:ss (m:ss under an hour; "--:--" when unknown or negative).
/// Example: `kd::clock_string(3725.2)` → "1:02:05", `kd::clock_string(65)` → "1:05".
std::string clock_string(double seconds);

/// What a progress line shows.
struct Progress {
  std::string stage;
  int64_t done = 0, total = 0;   ///< the stage's steps
  double loss = 0.0, samples_per_s = 0.0;
  double elapsed_s = 0.0;        ///< since the run began
  double stage_eta_s = -1.0;     ///< until the stage ends (< 0: unknown)
  double run_eta_s = -1.0;       ///< until the last stage ends (< 0: unknown)
};

/// One progress line no wider than `columns` characters:
///   "[logits] ####....  120/430  loss 0.4521  812/s  0:41 elapsed, stage ETA 1:13, run ETA 4:02"
/// The bar (at most 30 cells) shrinks to 10, then the speed, the elapsed time and the loss go, in that
/// order, then the bar; the steps and both ETAs stay (a line too narrow even for those is cut at `columns`).
std::string progress_line(const Progress& p, int columns);

/// Shows training progress. When stdout is a terminal: a progress bar redrawn in place (at most 10
/// times a second) with step/total, loss, speed, elapsed time and the stage's and whole run's ETA as
/// h:mm:ss, fitted to the terminal's width (re-read at each redraw).
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
  int64_t total_steps_ = 0;      // the run's, from FitInfo
  int64_t run_first_step_ = -1;  // global step of this process's first step (a resumed run starts later)
  std::chrono::steady_clock::time_point stage_start_, last_draw_, fit_start_;
};

}  // namespace kd
