#pragma once
/// \file
/// The interface a C++ model implements to take part in distillation.

#include <torch/nn/module.h>

#include "kd/core/model_output.h"

namespace kd {

/// A LibTorch module whose forward returns a ModelOutput.
///
/// Implement it in the usual `Impl` + `TORCH_MODULE` way:
/// ```
/// struct TinyNetImpl : kd::Model {
///   TinyNetImpl() { fc = register_module("fc", torch::nn::Linear(784, 10)); }
///   kd::ModelOutput forward(const torch::Tensor& x) override {
///     kd::ModelOutput out;
///     out.logits = fc->forward(x.flatten(1));
///     return out;
///   }
///   torch::nn::Linear fc{nullptr};
/// };
/// TORCH_MODULE(TinyNet);
/// ```
class Model : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  virtual ModelOutput forward(const torch::Tensor& inputs) = 0;
};

using ModelPtr = std::shared_ptr<Model>;

/// Number of elements in all parameters of `module` (trainable or not).
int64_t parameter_count(const torch::nn::Module& module);

/// Bytes the weights occupy in memory: Σ numel·element_size over parameters and
/// buffers (BatchNorm running statistics count: they ship with the model).
///
/// Example: a float32 Linear(10, 2) has 22 parameters, 88 bytes.
int64_t parameter_bytes(const torch::nn::Module& module);

}  // namespace kd
