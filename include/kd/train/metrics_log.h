#pragma once
/// \file
/// metrics.jsonl: one JSON object per line for every step and evaluation.

#include <cstdio>
#include <string>

#include "kd/train/callback.h"

namespace kd {

/// Appends to `path`, one line per event, flushed as written so a crash loses
/// at most the line being written (a line left without its newline by a killed
/// process is cut off when the log is opened again, so resumed runs append
/// whole lines; and when fit() resumes from the checkpoint of step S, the lines
/// of the steps after S go before "fit_begin" is written, so each step that the
/// resumed run does again is logged once):
///
///   {"event":"step","stage":"kl","time":1796681234.125,"global_step":12,"stage_step":3,"progress":0.25,
///    "loss":0.41,"parts":{"kl":0.39,"w.kl":1.0},"lr":0.001,"grad_norm":0.8,"samples_per_s":2100.0}
///   ("time": wall-clock seconds since 1970 when the step ended; "global_step": the steps done before it)
///   {"event":"eval","stage":"kl","global_step":40,"metrics":{"accuracy":0.88,"macro_f1":0.87}}
///   {"event":"stage_begin"|"stage_end","stage":"kl","global_step":40}
///   {"event":"fit_begin","student_parameters":16650,"student_bytes":67032,"teacher_parameters":871018,...}
///   {"event":"fit_end","global_step":900,"stopped_by_signal":0,"nonfinite_steps":0,"rollbacks":0,"lr_scale":1}
///
/// Step lines also carry "skipped_nonfinite" (the update was dropped) and "nonfinite_total".
///
/// Non-finite numbers are written as null (JSON has no NaN).
///
/// Example: `trainer.add_callback(std::make_shared<kd::MetricsLog>("runs/x/metrics.jsonl"));`
class MetricsLog : public Callback {
 public:
  explicit MetricsLog(const std::string& path);
  ~MetricsLog() override;
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void on_stage_begin(const Stage& stage, const StepInfo& step) override;
  void on_stage_end(const Stage& stage, const StepInfo& step) override;
  void on_step_end(const StepReport& report) override;
  void on_eval(const EvalResult& result) override;
  void on_fit_begin(const FitInfo& info) override;
  void on_fit_end(const TrainSummary& summary) override;

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::string stage_;  // the stage the step lines belong to
  std::FILE* file_ = nullptr;
};

}  // namespace kd
