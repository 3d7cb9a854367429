#include "kd/losses/any_loss.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {

void AnyLoss::init_any(torch::nn::AnyModule module) {
  module_ = std::move(module);
  forward_ = nullptr;
  needs_ = nullptr;
}

std::shared_ptr<torch::nn::Module> AnyLoss::ptr() const {
  return module_.is_empty() ? nullptr : module_.ptr();
}

LossResult AnyLoss::forward(const DistillBatch& batch) {
  if (module_.is_empty()) {
    throw Error(ErrorCategory::kState, "AnyLoss::forward on an empty loss; construct it from a loss module");
  }
  if (forward_) return forward_(*module_.ptr(), batch);
  try {
    return module_.forward<LossResult>(batch);
  } catch (const c10::Error& e) {
    // AnyModule checks the signature only now; say what a loss must look like.
    throw Error(ErrorCategory::kConfig,
                fmt::format("loss module {} cannot be called as `kd::LossResult forward(const kd::DistillBatch&)`: {}",
                            module_.ptr()->name(), e.what_without_backtrace()));
  }
}

bool AnyLoss::needs_input_grad() const {
  if (module_.is_empty()) return false;
  const auto m = module_.ptr();
  if (needs_ && needs_(*m)) return true;
  return kd::needs_input_grad(*m);
}

AnyLoss AnyLoss::clone(const c10::optional<torch::Device>& device) const {
  AnyLoss copy;
  copy.module_ = module_.clone(device);
  copy.forward_ = forward_;
  copy.needs_ = needs_;
  return copy;
}

}  // namespace kd
