#include "kd/train/console_logger.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/core/format.h"
#include <torch/torch.h>

#include "kd/train/stage.h"

namespace kd {

namespace {

// Metrics in the order a reader looks for them; anything else follows alphabetically.
const std::vector<std::string>& preferred_metrics() {
  static const std::vector<std::string> order = {"accuracy", "macro_f1", "nll", "perplexity", "bits_per_byte",
                                                 "token_accuracy"};
  return order;
}

}  // namespace

std::string summary_table(const TrainSummary& summary) {
  const std::vector<const EvalResult*> rows = last_evaluation_per_stage(summary);
  std::vector<std::string> columns;
  for (const auto& m : preferred_metrics()) {
    if (std::any_of(rows.begin(), rows.end(), [&](const EvalResult* r) { return r->metrics.count(m) > 0; })) {
      columns.push_back(m);
    }
  }
  std::map<std::string, bool> others;  // sorted, unique
  for (const auto* r : rows) {
    for (const auto& [name, v] : r->metrics) {
      if (std::find(columns.begin(), columns.end(), name) == columns.end()) others[name] = true;
    }
  }
  for (const auto& [name, unused] : others) columns.push_back(name);

  size_t stage_width = 5;
  for (const auto* r : rows) stage_width = std::max(stage_width, r->stage.size());
  std::string out;
  if (!rows.empty()) {
    out += fmt::format("{:<{}}  {:>8}", "stage", stage_width, "step");
    for (const auto& c : columns) out += fmt::format("  {:>{}}", c, std::max<size_t>(c.size(), 8));
    out += "\n";
    for (const auto* r : rows) {
      out += fmt::format("{:<{}}  {:>8}", r->stage, stage_width, r->global_step);
      for (const auto& c : columns) {
        auto it = r->metrics.find(c);
        const size_t w = std::max<size_t>(c.size(), 8);
        out += it == r->metrics.end() ? fmt::format("  {:>{}}", "-", w) : fmt::format("  {:>{}.4f}", it->second, w);
      }
      out += "\n";
    }
  }
  std::string ending = "finished";
  if (summary.stopped_by_signal != 0) ending = fmt::format("stopped by signal {}", summary.stopped_by_signal);
  out += fmt::format("{} steps{}; {}", with_thousands(summary.steps),
                     summary.resumed ? fmt::format(" (resumed at step {})", summary.resumed_from_step) : std::string(),
                     ending);
  if (summary.nonfinite_steps > 0) {
    out += fmt::format("; {} non-finite step(s) not applied, {} rollback(s), learning rates x{:.4g}",
                       summary.nonfinite_steps, summary.rollbacks, summary.lr_scale);
  }
  return out;
}

ConsoleLogger::ConsoleLogger(int64_t every) : every_(every), tty_(::isatty(::fileno(stdout)) == 1) {}

void ConsoleLogger::on_stage_begin(const Stage& stage, const StepInfo& step) {
  stage_ = stage.name();
  first_step_ = step.stage_step;
  stage_start_ = std::chrono::steady_clock::now();
}

void ConsoleLogger::on_stage_end(const Stage&, const StepInfo&) {
  if (mid_line_) std::fputs("\n", stdout);
  mid_line_ = false;
}

void ConsoleLogger::on_step_end(const StepReport& r) {
  const int64_t done = r.step.stage_step + 1;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (done != r.step.stage_steps && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double elapsed = std::chrono::duration<double>(now - stage_start_).count();
    const double eta = elapsed / double(std::max<int64_t>(1, done - first_step_)) * double(r.step.stage_steps - done);
    const int width = 30;
    const int filled = static_cast<int>(width * double(done) / double(std::max<int64_t>(1, r.step.stage_steps)));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    std::fprintf(stdout, "\r[%s] %s %lld/%lld  loss %.4f  %.0f samples/s  ETA %.0f s   ", stage_.c_str(), bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(r.step.stage_steps), r.loss.total.item<double>(),
                 r.samples_per_s, eta);
    std::fflush(stdout);
    mid_line_ = true;
    return;
  }
  if (every_ <= 0 || (done % every_ != 0 && done != r.step.stage_steps)) return;
  std::string parts;
  for (const auto& [name, v] : r.loss.parts) parts += fmt::format(" {}={:.4f}", name, v.item<double>());
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start_).count();
  const double per_step = elapsed / double(std::max<int64_t>(1, done - first_step_));
  const double eta = per_step * double(r.step.stage_steps - done);
  spdlog::info("[{}] step {}/{}  loss {:.4f} |{}  lr {:.3g}  {:.0f} samples/s  ETA {:.0f} s", stage_, done,
               r.step.stage_steps, r.loss.total.item<double>(), parts, r.lr, r.samples_per_s, eta);
}

void ConsoleLogger::on_fit_begin(const FitInfo& info) {
  const auto size = [](int64_t params, int64_t bytes) {
    return fmt::format("{} parameters, {:.1f} KiB", with_thousands(params), bytes / 1024.0);
  };
  spdlog::info("student: {}{}; {} training examples, {} stage(s){}", size(info.student_parameters, info.student_bytes),
               info.teacher_parameters > 0 ? "; teacher: " + size(info.teacher_parameters, info.teacher_bytes)
                                           : std::string(),
               with_thousands(info.train_examples), info.stages,
               info.resumed ? fmt::format(", resumed at step {}", info.resumed_from_step) : std::string());
}

void ConsoleLogger::on_fit_end(const TrainSummary& summary) {
  if (mid_line_) std::fputs("\n", stdout);
  mid_line_ = false;
  std::fflush(stdout);
  if (summary.nonfinite_steps > 0) {
    spdlog::warn("{} step(s) had a non-finite loss or gradient and were not applied; {} rollback(s); learning rates "
                 "x{:.4g}",
                 summary.nonfinite_steps, summary.rollbacks, summary.lr_scale);
  }
  spdlog::info("summary:\n{}", summary_table(summary));
}

void ConsoleLogger::on_eval(const EvalResult& result) {
  std::string metrics;
  for (const auto& key : {"accuracy", "macro_f1", "nll", "perplexity", "bits_per_byte", "token_accuracy"}) {
    if (auto it = result.metrics.find(key); it != result.metrics.end()) metrics += fmt::format(" {} {:.4f}", key, it->second);
  }
  if (mid_line_) std::fputs("\n", stdout);
  mid_line_ = false;
  spdlog::info("[{}] evaluation at step {}:{}", result.stage, result.global_step, metrics);
}

}  // namespace kd
