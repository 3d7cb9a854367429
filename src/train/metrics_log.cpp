#include "kd/train/metrics_log.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/io/atomic_file.h"
#include "kd/core/error.h"
#include "kd/train/stage.h"

namespace kd {
namespace {

// `s` as a JSON string literal, quotes included. By hand rather than nlohmann_json, which refuses a name that is
// not valid UTF-8.
std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// `x` as a JSON number, or null when it is not finite.
std::string json_number(double x) { return std::isfinite(x) ? fmt::format("{}", x) : "null"; }

// A process killed while writing a line leaves it without its newline; a resumed run appending after it
// would glue two objects together. Cut the file back to its last complete line.
void drop_partial_last_line(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  uintmax_t keep = size;
  for (uintmax_t pos = size; pos > 0; --pos) {
    in.seekg(static_cast<std::streamoff>(pos - 1));
    if (in.get() == '\n') break;
    keep = pos - 1;
  }
  in.close();
  if (keep != size) std::filesystem::resize_file(path, keep, ec);
}

// The line's own "global_step" (the first one: fit_end's "final" holds more further on); -1 when it has none.
int64_t line_step(const std::string& line) {
  static const std::string key = "\"global_step\":";
  const auto at = line.find(key);
  return at == std::string::npos ? -1 : std::strtoll(line.c_str() + at + key.size(), nullptr, 10);
}

// A run resumed from a checkpoint taken after `done` steps does every later step again: the lines the earlier
// process wrote for them go, so each step is logged once. A step line carries the steps done before it (the
// resumed run's first is `done`); the other events the steps done when they happened, so what followed the
// checkpoint at `done` stays (its evaluation, the stage's end), except the next stage's begin, written again.
void cut_redone_steps(const std::string& path, int64_t done) {
  std::ifstream in(path, std::ios::binary);
  std::string kept, line;
  bool cut = false;
  while (std::getline(in, line)) {
    const int64_t s = line_step(line);
    const auto is = [&](const char* event) { return line.rfind(fmt::format(R"({{"event":"{}")", event), 0) == 0; };
    const bool again = is("step") ? s >= done : s > done || (s == done && is("stage_begin"));
    cut = cut || again;
    if (!again) kept += line + "\n";
  }
  in.close();
  if (cut) write_bytes_atomically(path, kept);
}

std::string metrics_object(const std::map<std::string, double>& metrics) {
  std::string out;
  for (const auto& [name, v] : metrics) out += fmt::format("{}{}:{}", out.empty() ? "" : ",", json_quote(name), json_number(v));
  return "{" + out + "}";
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path) : path_(path) {
  drop_partial_last_line(path);
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot open metrics log '{}' for writing: {}", path, std::strerror(errno)));
  }
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write_line(const std::string& line) {
  if (std::fputs((line + "\n").c_str(), file_) < 0 || std::fflush(file_) != 0) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot write to metrics log '{}': {}", path_, std::strerror(errno)));
  }
}

void MetricsLog::on_stage_begin(const Stage& stage, const StepInfo& step) {
  stage_ = stage.name();
  write_line(fmt::format(R"({{"event":"stage_begin","stage":{},"global_step":{}}})", json_quote(stage.name()),
                         step.global_step));
}

void MetricsLog::on_stage_end(const Stage& stage, const StepInfo& step) {
  write_line(fmt::format(R"({{"event":"stage_end","stage":{},"global_step":{}}})", json_quote(stage.name()),
                         step.global_step));
}

void MetricsLog::on_step_end(const StepReport& r) {
  std::string parts;
  for (const auto& [name, v] : r.loss.parts) {
    parts += fmt::format("{}{}:{}", parts.empty() ? "" : ",", json_quote(name), json_number(v.item<double>()));
  }
  write_line(fmt::format(
      R"({{"event":"step","stage":{},"time":{:.3f},"global_step":{},"stage_step":{},"epoch":{},"progress":{},"loss":{},"parts":{{{}}},"lr":{},"grad_norm":{},"samples_per_s":{},"skipped_nonfinite":{},"nonfinite_total":{},"communication_s":{}}})",
      json_quote(stage_),
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(),
      r.step.global_step, r.step.stage_step, r.step.epoch, json_number(r.step.progress),
      json_number(r.loss.total.defined() ? r.loss.total.item<double>() : NAN), parts, json_number(r.lr),
      json_number(r.grad_norm), json_number(r.samples_per_s), r.skipped_nonfinite ? "true" : "false",
      r.nonfinite_total, json_number(r.communication_s)));
}

void MetricsLog::on_fit_begin(const FitInfo& i) {
  if (i.resumed) {
    std::fclose(file_);
    file_ = nullptr;
    cut_redone_steps(path_, i.resumed_from_step);
    file_ = std::fopen(path_.c_str(), "a");
    if (!file_) {
      throw Error(ErrorCategory::kFile, fmt::format("cannot open metrics log '{}' for writing: {}", path_, std::strerror(errno)));
    }
  }
  write_line(fmt::format(
      R"({{"event":"fit_begin","student_parameters":{},"student_bytes":{},"teacher_parameters":{},"teacher_bytes":{},"train_examples":{},"stages":{},"resumed_from_step":{}}})",
      i.student_parameters, i.student_bytes, i.teacher_parameters, i.teacher_bytes, i.train_examples, i.stages,
      i.resumed ? std::to_string(i.resumed_from_step) : "null"));
}

void MetricsLog::on_fit_end(const TrainSummary& s) {
  // "final": each stage's last evaluation, so the run's result is one line to read back.
  std::string final_metrics;
  for (const auto* e : last_evaluation_per_stage(s)) {
    final_metrics += fmt::format("{}{}:{{\"global_step\":{},\"metrics\":{}}}", final_metrics.empty() ? "" : ",",
                                 json_quote(e->stage), e->global_step, metrics_object(e->metrics));
  }
  write_line(fmt::format(
      R"({{"event":"fit_end","global_step":{},"stopped_by_signal":{},"nonfinite_steps":{},"rollbacks":{},"lr_scale":{},"final":{{{}}}}})",
      s.steps, s.stopped_by_signal, s.nonfinite_steps, s.rollbacks, json_number(s.lr_scale), final_metrics));
}

void MetricsLog::on_eval(const EvalResult& result) {
  write_line(fmt::format(R"({{"event":"eval","stage":{},"global_step":{},"metrics":{}}})", json_quote(result.stage),
                         result.global_step, metrics_object(result.metrics)));
}

}  // namespace kd
