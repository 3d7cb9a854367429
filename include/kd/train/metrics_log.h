#pragma once
/// \file
/// metrics.jsonl: one JSON object per line for every step and evaluation.

#include <cstdio>
#include <string>

#include "kd/train/callback.h"

namespace kd {

/// Appends to `path`, one line per event, flushed as written so a crash loses
/// at most the line being written:
///
///   {"event":"step","stage":"kl","global_step":12,"stage_step":3,"progress":0.25,"loss":0.41,
///    "parts":{"kl":0.39,"w.kl":1.0},"lr":0.001,"grad_norm":0.8,"samples_per_s":2100.0}
///   {"event":"eval","stage":"kl","global_step":40,"metrics":{"accuracy":0.88,"macro_f1":0.87}}
///   {"event":"stage_begin"|"stage_end","stage":"kl","global_step":40}
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

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::FILE* file_ = nullptr;
};

/// `s` as a JSON string literal, quotes included.
std::string json_quote(const std::string& s);
/// `x` as a JSON number, or null when it is not finite.
std::string json_number(double x);

}  // namespace kd
