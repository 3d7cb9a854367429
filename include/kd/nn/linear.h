#pragma once
/// \file
/// kd::nn::Linear: torch::nn::Linear with an optional adapter on its input path (LoRA with dropout).

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace kd::nn {

/// What a kd::nn::Linear adds to its output. kd::lora attaches one per adapted layer.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  /// The term added to the layer's output for its input `x`; `training` is the layer's mode
  /// (e.g. dropout on the adapter's input only while training).
  virtual torch::Tensor forward(const torch::Tensor& x, bool training) = 0;
  /// False while the adapter adds nothing (e.g. LoRA merged into the weight): forward() is not called.
  virtual bool active() const { return true; }
  /// Short name for printing ("lora").
  virtual std::string kind() const = 0;
};

/// A torch::nn::Linear whose output can carry an attached adapter's term:
///
///   y = x·Wᵀ + b                    (no adapter, or an inactive one: exactly torch::nn::Linear)
///   y = x·Wᵀ + b + adapter(x)       (e.g. LoRA: adapter(x) = s·B(A(dropout(x))))
///
/// It *is* a torch::nn::LinearImpl (same `weight`/`bias` parameters and `options`), so state
/// dicts, checkpoints, optimizers and code that casts to torch::nn::LinearImpl (kd::qat::prepare,
/// kd::qat::export_int8) treat it as one; W is the `weight` member, so a re-parametrisation that
/// assigns it (QAT's fake-quantized weight) is honoured. The adapter is not registered in this
/// module: it belongs to whoever attached it (kd::lora::LoRA holds the parameters and saves them).
///
/// Why a subclass: LibTorch parents call their members' forward directly (non-virtual, no forward
/// hooks), so only a layer whose own forward adds the term can see x. A model that wants LoRA
/// dropout therefore declares its layers as kd::nn::Linear — the member's *declared* type must
/// be kd::nn::Linear: a torch::nn::Linear holder pointing at a kd::nn::LinearImpl calls the base
/// forward and skips the adapter (kd::lora::Hook detects that on the first steps).
///
/// clone() returns a kd::nn::Linear with copies of the parameters and no adapter attached.
///
/// Example:
/// ```
/// struct NetImpl : kd::Model {
///   NetImpl() { fc = register_module("fc", kd::nn::Linear(784, 10)); }
///   kd::ModelOutput forward(const torch::Tensor& x) override { kd::ModelOutput o; o.logits = fc->forward(x); return o; }
///   kd::nn::Linear fc{nullptr};
/// };
/// auto net = std::make_shared<NetImpl>();
/// kd::lora::apply(net, kd::lora::Options().rank(4).dropout(0.1).targets({"fc"}));   // a real adapter on fc
/// ```
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;

  /// x·Wᵀ + b, plus the adapter's term when one is attached and active. Hides the base forward.
  torch::Tensor forward(const torch::Tensor& input);

  /// Attaches `adapter` (replacing none: throws kd::Error (kState) if one is attached already).
  void attach(std::shared_ptr<LinearAdapter> adapter);
  /// Removes the adapter, if any: an ordinary Linear again.
  void detach();
  const std::shared_ptr<LinearAdapter>& adapter() const { return adapter_; }
  /// How many times forward() has run (lets kd::lora::Hook notice a layer called through the base class).
  int64_t forward_calls() const { return forward_calls_; }

  /// A kd::nn::Linear (not a sliced torch::nn::Linear) with deep copies of weight and bias, no adapter.
  /// (torch::optional: the type of the virtual it overrides, in LibTorch 1.13 and 2.x alike.)
  std::shared_ptr<torch::nn::Module> clone(
      const torch::optional<torch::Device>& device = torch::nullopt) const override;
  /// "kd::nn::Linear(in_features=4, out_features=2, bias=true, adapter=lora)"
  void pretty_print(std::ostream& stream) const override;

 private:
  std::shared_ptr<LinearAdapter> adapter_;
  int64_t forward_calls_ = 0;
};
TORCH_MODULE(Linear);

}  // namespace kd::nn
