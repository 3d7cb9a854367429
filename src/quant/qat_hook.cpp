#include "kd/quant/qat_hook.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/stage.h"

namespace kd::qat {

Hook::Hook(QAT qat, HookOptions options) : qat_(std::move(qat)), options_(options) {
  if (!(options_.freeze_observers_at() >= 0 && options_.freeze_observers_at() <= 1)) {
    throw Error(ErrorCategory::kValue, fmt::format("QAT hook: freeze_observers_at must be in [0, 1] (a fraction of "
                                                   "the stage), got {}",
                                                   options_.freeze_observers_at()));
  }
  qat_->restore();  // float until a stage using the hook begins
}

std::vector<torch::Tensor> Hook::on_stage_begin(torch::nn::Module&, const Stage& stage) {
  qat_->enable_fake_quant(true);
  qat_->enable_observers(options_.freeze_observers_at() > 0);
  spdlog::info("stage '{}': {}; observers freeze at {:.0f} % of the stage", stage.name(), qat_->summary(),
               100 * options_.freeze_observers_at());
  return {};
}

void Hook::before_forward(const StepInfo& step) {
  const bool observe = step.progress < options_.freeze_observers_at();
  if (observe != qat_->observers_enabled()) qat_->enable_observers(observe);
  qat_->refresh();
}

void Hook::sync_weights() {
  const bool observing = qat_->observers_enabled();
  qat_->enable_observers(false);
  qat_->refresh();
  qat_->enable_observers(observing);
}

void Hook::on_stage_end(torch::nn::Module&, const Stage&) {
  // The weights the optimizer left, fake-quantized, with no graph: what evaluation and export see.
  torch::NoGradGuard no_grad;
  sync_weights();
}

void Hook::on_eval_begin() {
  observers_before_eval_ = qat_->observers_enabled();
  qat_->enable_observers(false);
}

void Hook::on_eval_end() { qat_->enable_observers(observers_before_eval_); }

}  // namespace kd::qat
