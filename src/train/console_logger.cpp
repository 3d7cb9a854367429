#include "kd/train/console_logger.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/detail/format.h"
#include <torch/torch.h>

#include "kd/train/metric_names.h"
#include "kd/train/stage.h"

namespace kd {

namespace {

// Metrics in the order a reader looks for them (kd::metric::known); anything else follows alphabetically.
const std::vector<std::string>& preferred_metrics() {
  static const std::vector<std::string> order = [] {
    std::vector<std::string> names;
    for (const auto& m : metric::known()) names.push_back(m.name);
    return names;
  }();
  return order;
}

// The terminal's width: the window size of stdout, else $COLUMNS, else 80.
int terminal_columns() {
  winsize w{};
  if (::ioctl(::fileno(stdout), TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  if (const char* c = std::getenv("COLUMNS")) {
    const int n = std::atoi(c);
    if (n > 0) return n;
  }
  return 80;
}

}  // namespace

std::string clock_string(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "--:--";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = total / 60 % 60, sec = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, sec) : fmt::format("{}:{:02}", m, sec);
}

std::string progress_line(const Progress& p, int columns) {
  const std::string head = fmt::format("[{}] ", p.stage);
  const std::string steps = fmt::format("{}/{}", p.done, p.total);
  const std::string eta =
      fmt::format("stage ETA {}, run ETA {}", clock_string(p.stage_eta_s), clock_string(p.run_eta_s));
  // Dropped in this order when the line does not fit: the speed, the elapsed time, the loss.
  std::vector<std::string> optional{fmt::format("loss {:.4f}", p.loss), fmt::format("{} elapsed", clock_string(p.elapsed_s)),
                                    fmt::format("{:.0f}/s", p.samples_per_s)};
  auto line_with = [&](size_t keep, int bar) {
    std::string line = head;
    if (bar > 0) {
      const double f = p.total > 0 ? std::clamp(double(p.done) / double(p.total), 0.0, 1.0) : 0.0;
      std::string b(static_cast<size_t>(std::lround(bar * f)), '#');
      b.resize(static_cast<size_t>(bar), '.');
      line += b + "  ";
    }
    line += steps;
    for (size_t i = 0; i < keep; ++i) line += "  " + optional[i];
    return line + "  " + eta;
  };
  for (size_t keep = optional.size() + 1; keep-- > 0;) {
    const auto bare = static_cast<int>(line_with(keep, 0).size());
    // A bar of at least 10 cells, at most 30, in the room left (2 for its separator).
    const int bar = std::min(30, columns - bare - 2);
    if (bar >= 10) return line_with(keep, bar);
    if (bare <= columns && keep == 0) return line_with(0, 0);
  }
  return line_with(0, 0).substr(0, static_cast<size_t>(std::max(columns, 0)));
}

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
  out += fmt::format("{} steps{}; {}", detail::with_thousands(summary.steps),
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
  if (run_first_step_ < 0) run_first_step_ = r.step.global_step;
  const double stage_elapsed = std::chrono::duration<double>(now - stage_start_).count();
  const double per_step = stage_elapsed / double(std::max<int64_t>(1, done - first_step_));
  const double eta = per_step * double(r.step.stage_steps - done);
  if (tty_) {
    if (done != r.step.stage_steps && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    Progress p;
    p.stage = stage_;
    p.done = done;
    p.total = r.step.stage_steps;
    p.loss = r.loss.total.item<double>();
    p.samples_per_s = r.samples_per_s;
    p.elapsed_s = std::chrono::duration<double>(now - fit_start_).count();
    p.stage_eta_s = eta;
    // The run's remaining steps at the whole run's pace so far (stages differ in cost per step).
    const int64_t run_done = r.step.global_step + 1 - run_first_step_;
    if (total_steps_ > 0 && run_done > 0) {
      p.run_eta_s = p.elapsed_s / double(run_done) * double(std::max<int64_t>(0, total_steps_ - r.step.global_step - 1));
    }
    std::fprintf(stdout, "\r%s\x1b[K", progress_line(p, terminal_columns() - 1).c_str());
    std::fflush(stdout);
    mid_line_ = true;
    return;
  }
  if (every_ <= 0 || (done % every_ != 0 && done != r.step.stage_steps)) return;
  std::string parts;
  for (const auto& [name, v] : r.loss.parts) parts += fmt::format(" {}={:.4f}", name, v.item<double>());
  spdlog::info("[{}] step {}/{}  loss {:.4f} |{}  lr {:.3g}  {:.0f} samples/s  stage ETA {}", stage_, done,
               r.step.stage_steps, r.loss.total.item<double>(), parts, r.lr, r.samples_per_s, clock_string(eta));
}

void ConsoleLogger::on_fit_begin(const FitInfo& info) {
  total_steps_ = info.total_steps;
  fit_start_ = std::chrono::steady_clock::now();
  const auto size = [](int64_t params, int64_t bytes) {
    return fmt::format("{} parameters, {:.1f} KiB", detail::with_thousands(params), bytes / 1024.0);
  };
  spdlog::info("student: {}{}; {} training examples, {} stage(s){}", size(info.student_parameters, info.student_bytes),
               info.teacher_parameters > 0 ? "; teacher: " + size(info.teacher_parameters, info.teacher_bytes)
                                           : std::string(),
               detail::with_thousands(info.train_examples), info.stages,
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
  for (const auto& key : preferred_metrics()) {
    if (auto it = result.metrics.find(key); it != result.metrics.end()) metrics += fmt::format(" {} {:.4f}", key, it->second);
  }
  if (mid_line_) std::fputs("\n", stdout);
  mid_line_ = false;
  spdlog::info("[{}] evaluation at step {}:{}", result.stage, result.global_step, metrics);
}

}  // namespace kd
