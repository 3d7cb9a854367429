#include "kd/train/console_logger.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/train/stage.h"

namespace kd {

void ConsoleLogger::on_stage_begin(const Stage& stage, const StepInfo& step) {
  stage_ = stage.name();
  first_step_ = step.stage_step;
  stage_start_ = std::chrono::steady_clock::now();
}

void ConsoleLogger::on_step_end(const StepReport& r) {
  const int64_t done = r.step.stage_step + 1;
  if (every_ <= 0 || (done % every_ != 0 && done != r.step.stage_steps)) return;
  std::string parts;
  for (const auto& [name, v] : r.loss.parts) parts += fmt::format(" {}={:.4f}", name, v.item<double>());
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start_).count();
  const double per_step = elapsed / double(std::max<int64_t>(1, done - first_step_));
  const double eta = per_step * double(r.step.stage_steps - done);
  spdlog::info("[{}] step {}/{}  loss {:.4f} |{}  lr {:.3g}  {:.0f} samples/s  ETA {:.0f} s", stage_, done,
               r.step.stage_steps, r.loss.total.item<double>(), parts, r.lr, r.samples_per_s, eta);
}

void ConsoleLogger::on_eval(const EvalResult& result) {
  std::string metrics;
  for (const auto& key : {"accuracy", "macro_f1"}) {
    if (auto it = result.metrics.find(key); it != result.metrics.end()) metrics += fmt::format(" {} {:.4f}", key, it->second);
  }
  spdlog::info("[{}] evaluation at step {}:{}", result.stage, result.global_step, metrics);
}

}  // namespace kd
