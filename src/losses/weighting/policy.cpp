#include "kd/losses/weighting/policy.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {

void AnyWeighting::set_module(std::shared_ptr<torch::nn::Module> module) {
  auto* policy = dynamic_cast<WeightingPolicy*>(module.get());
  if (module && !policy) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("module {} is not a kd::WeightingPolicy", module->name()));
  }
  policy_ = policy;
  module_ = std::move(module);
}

AnyWeighting AnyWeighting::clone(const c10::optional<torch::Device>& device) const {
  AnyWeighting copy;
  if (module_) copy.set_module(module_->clone(device));
  return copy;
}

}  // namespace kd
