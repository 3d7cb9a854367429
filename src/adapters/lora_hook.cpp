#include "kd/adapters/lora_hook.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/stage.h"

namespace kd::lora {

std::vector<torch::Tensor> Hook::on_stage_begin(torch::nn::Module& student, const Stage& stage) {
  lora_->unmerge();  // no-op unless an earlier stage merged
  if (stage.trainable().empty()) {
    for (auto& p : student.parameters()) p.requires_grad_(false);
  }
  for (auto& p : lora_->base_parameters()) p.requires_grad_(false);
  std::vector<torch::Tensor> adapters;
  for (auto& p : lora_->parameters()) {
    p.requires_grad_(true);
    adapters.push_back(p);
  }
  stage_report_ = lora_->report();
  calls_at_stage_begin_ = lora_->attached_forward_calls();
  forwards_in_stage_ = 0;
  spdlog::info("stage '{}': LoRA rank {} on {} layers{}; {}", stage.name(), lora_->options().rank(),
               lora_->targets().size(),
               lora_->options().dropout() > 0 ? fmt::format(" (dropout {} on their inputs)", lora_->options().dropout()) : "",
               stage_report_.to_string());
  return adapters;
}

void Hook::before_forward(const StepInfo&) {
  if (++forwards_in_stage_ == 2 && !calls_at_stage_begin_.empty()) {
    // The first training forward is done: did it reach the attached layers' own forward?
    const auto names = lora_->attached_targets();
    const auto calls = lora_->attached_forward_calls();
    std::vector<std::string> skipped;
    for (size_t i = 0; i < names.size(); ++i) {
      if (calls[i] == calls_at_stage_begin_[i]) skipped.push_back(names[i]);
    }
    const auto why = fmt::format(
        "LoRA: the first forward of this stage never ran kd::nn::Linear::forward of [{}], so their adapters were "
        "skipped: the model calls them through a torch::nn::Linear member (the base class's forward); declare those "
        "members as kd::nn::Linear",
        fmt::join(skipped, ", "));
    if (skipped.size() == names.size()) throw Error(ErrorCategory::kModel, why);
    if (!skipped.empty()) spdlog::warn("{} (or ignore this if the model skips those layers on some inputs)", why);
  }
  lora_->refresh();
}

void Hook::on_stage_end(torch::nn::Module&, const Stage& stage) {
  if (!options_.save_adapter_to().empty()) {
    lora_->save_adapter(options_.save_adapter_to());
    spdlog::info("stage '{}': LoRA adapter saved to {}", stage.name(), options_.save_adapter_to());
  }
  if (options_.merge_at_end()) lora_->merge();
}

}  // namespace kd::lora
