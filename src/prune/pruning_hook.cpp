#include "kd/prune/pruning_hook.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"
#include "kd/train/stage.h"

namespace kd::prune {

Hook::Hook(Pruning pruning, HookOptions options) : pruning_(std::move(pruning)), options_(std::move(options)) {
  auto check = [](const std::string& where, const StageSparsity& s) {
    if (!(s.start >= 0 && s.start < 1 && s.end >= 0 && s.end < 1)) {
      throw Error(ErrorCategory::kConfig, fmt::format("pruning schedule {}: start {} and end must be in [0, 1), got end {}",
                                                      where, s.start, s.end));
    }
  };
  check("(default)", options_.schedule());
  for (const auto& [stage, s] : options_.stages()) check("of stage '" + stage + "'", s);
  if (options_.update_every() < 1) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("pruning: update_every must be >= 1 step, got {}", options_.update_every()));
  }
}

std::vector<torch::Tensor> Hook::on_stage_begin(torch::nn::Module&, const Stage& stage) {
  const auto it = options_.stages().find(stage.name());
  current_ = it != options_.stages().end() ? it->second : options_.schedule();
  pruning_->mask_gradients();
  pruning_->update(current_.start);
  pruning_->apply();
  spdlog::info("pruning ({}) in stage '{}': sparsity {:.2f} -> {:.2f}, masks updated every {} steps",
               pruning_->options().granularity() == Granularity::kUnstructured ? "unstructured"
               : pruning_->options().granularity() == Granularity::kChannel    ? "channels"
                                                                                 : "heads",
               stage.name(), current_.start, current_.end, options_.update_every());
  return {};
}

void Hook::before_forward(const StepInfo& step) {
  if (step.stage_step % options_.update_every() == 0) {
    pruning_->update(cubic_sparsity(current_.start, current_.end, step.progress));
  }
  pruning_->apply();
}

void Hook::after_step(const StepInfo&) { pruning_->apply(); }

void Hook::sync_weights() { pruning_->apply(); }

void Hook::on_stage_end(torch::nn::Module&, const Stage& stage) {
  pruning_->update(current_.end);
  pruning_->apply();
  pruning_->remove_gradient_masks();
  spdlog::info("stage '{}': {}", stage.name(), pruning_->report().to_string());
}

}  // namespace kd::prune
