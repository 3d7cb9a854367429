#pragma once
/// \file
/// Optional capabilities a loss module can declare to whoever runs it.

#include <torch/nn/module.h>

namespace kd {

/// A loss that differentiates with respect to the models' inputs (R1 gradient
/// matching) implements this interface, so a trainer — or a WeightedSum that
/// contains it — knows to make `batch.inputs` require grad and to run the
/// teacher with input gradients.
///
/// Detection is a `dynamic_cast` on the module (see kd::needs_input_grad), so
/// it works through type erasure (`torch::nn::AnyModule`, kd::AnyLoss).
///
/// Example:
/// ```
/// class MyR1Impl : public torch::nn::Cloneable<MyR1Impl>, public kd::NeedsInputGrad {
///  public:
///   bool needs_input_grad() const override { return true; }
///   ...
/// };
/// ```
class NeedsInputGrad {
 public:
  virtual ~NeedsInputGrad() = default;
  /// True when the next forward needs input gradients.
  virtual bool needs_input_grad() const = 0;
};

/// Whether `module` declares (through kd::NeedsInputGrad) that it needs input gradients.
///
/// Example: `if (kd::needs_input_grad(*stage.loss().ptr())) batch.inputs.requires_grad_(true);`
inline bool needs_input_grad(const torch::nn::Module& module) {
  const auto* traits = dynamic_cast<const NeedsInputGrad*>(&module);
  return traits != nullptr && traits->needs_input_grad();
}

}  // namespace kd
