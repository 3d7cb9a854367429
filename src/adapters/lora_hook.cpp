#include "kd/adapters/lora_hook.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

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
  spdlog::info("stage '{}': LoRA rank {} on {} layers; {}", stage.name(), lora_->options().rank(),
               lora_->targets().size(), stage_report_.to_string());
  return adapters;
}

void Hook::on_stage_end(torch::nn::Module&, const Stage& stage) {
  if (!options_.save_adapter_to().empty()) {
    lora_->save_adapter(options_.save_adapter_to());
    spdlog::info("stage '{}': LoRA adapter saved to {}", stage.name(), options_.save_adapter_to());
  }
  if (options_.merge_at_end()) lora_->merge();
}

}  // namespace kd::lora
