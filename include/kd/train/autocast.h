#pragma once
/// \file
/// Mixed precision: bf16 autocast around forward passes, fp32 master weights.

#include <torch/types.h>

#include "kd/core/enum_names.h"

namespace kd {

/// Precision of the forward passes (the weights, their gradients and the
/// optimizer state stay float32 either way).
enum class Precision {
  kFloat32,   ///< everything in float32 (the default)
  kBFloat16,  ///< LibTorch autocast to bfloat16 on the model's device (CUDA or CPU)
};
inline constexpr EnumNames<Precision, 2> kPrecisionNames{
    {{{Precision::kFloat32, "fp32"}, {Precision::kBFloat16, "bf16"}}}};

/// Turns LibTorch's autocast on for `device`'s type (CUDA or CPU) with dtype
/// bfloat16 for the guard's lifetime, then restores the previous state and
/// drops the cast-weight cache. Under it, matmul/conv-type ops run in bf16
/// while numerically sensitive ones (softmax, log_softmax, losses) run in
/// float32, as PyTorch's torch.autocast does; parameters themselves stay
/// float32, so the optimizer updates full-precision master weights.
/// Precision::kFloat32 makes the guard a no-op.
///
/// Example:
/// ```
/// { kd::AutocastGuard bf16(device, kd::Precision::kBFloat16);
///   auto out = student->forward(x);            // logits in bf16
///   loss = criterion(out).total; }
/// loss.backward();                             // grads in float32, like the weights
/// ```
class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, Precision precision);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat;
};

}  // namespace kd
