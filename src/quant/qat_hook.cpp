#include "kd/quant/qat_hook.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/stage.h"

namespace kd::qat {

namespace {
void check_fraction(double f, const std::string& where) {
  if (!(f >= 0 && f <= 1)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("QAT hook: {}freeze_observers_at must be in [0, 1] (a fraction of the stage), got {}", where, f));
  }
}
}  // namespace

Hook::Hook(QAT qat, HookOptions options) : qat_(std::move(qat)), options_(std::move(options)) {
  check_fraction(options_.freeze_observers_at(), "");
  for (const auto& [name, so] : options_.stages()) {
    const std::string where = fmt::format("stage '{}': ", name);
    if (so.freeze_observers_at()) check_fraction(*so.freeze_observers_at(), where);
    if (so.freeze_observers_at_step() && *so.freeze_observers_at_step() < 0) {
      throw Error(ErrorCategory::kValue, fmt::format("QAT hook: {}freeze_observers_at_step must be >= 0 (an optimizer "
                                                     "step of the stage), got {}",
                                                     where, *so.freeze_observers_at_step()));
    }
  }
  qat_->restore();  // float until a stage using the hook begins
}

bool Hook::observing_at(const StepInfo& step) const {
  if (!current_.observers()) return false;
  if (current_.freeze_observers_at_step()) return step.stage_step < *current_.freeze_observers_at_step();
  return step.progress < current_.freeze_observers_at().value_or(options_.freeze_observers_at());
}

std::vector<torch::Tensor> Hook::on_stage_begin(torch::nn::Module&, const Stage& stage) {
  current_ = options_.stage_options(stage.name());
  qat_->enable_fake_quant(current_.fake_quant());
  StepInfo first;  // step 0: whether the observers start on (the trainer's before_forward sets them per step)
  qat_->enable_observers(observing_at(first));
  std::string observers;
  if (!current_.observers()) {
    observers = "observers frozen";
  } else if (current_.freeze_observers_at_step()) {
    observers = fmt::format("observers freeze at step {} of the stage", *current_.freeze_observers_at_step());
  } else {
    observers = fmt::format("observers freeze at {:.0f} % of the stage",
                            100 * current_.freeze_observers_at().value_or(options_.freeze_observers_at()));
  }
  spdlog::info("stage '{}': {}; fake quantization {}, {}", stage.name(), qat_->summary(),
               current_.fake_quant() ? "on" : "off (calibration: float model)", observers);
  return {};
}

void Hook::before_forward(const StepInfo& step) {
  const bool observe = observing_at(step);
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
