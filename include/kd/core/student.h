#pragma once
/// \file
/// The trainable student.

#include <string>

#include <torch/nn/pimpl.h>

#include "kd/core/model.h"

namespace kd {

/// The model being trained: a C++ kd::Model or a TorchScript file whose
/// parameters are trained in place.
///
/// Example:
/// ```
/// kd::Student student(std::make_shared<kd::models::DepthwiseCnnImpl>());
/// torch::optim::AdamW opt(student->parameters(), torch::optim::AdamWOptions(1e-3));
/// kd::ModelOutput s = student->forward(batch);
/// ```
class StudentImpl : public torch::nn::Module {
 public:
  explicit StudentImpl(ModelPtr model);

  /// A student from a TorchScript file (see kd::ScriptModel for the outputs it accepts).
  static std::shared_ptr<StudentImpl> load(const std::string& path,
                                           const torch::Device& device = torch::kCPU);

  ModelOutput forward(const torch::Tensor& inputs) { return model_->forward(inputs); }

  const ModelPtr& model() const { return model_; }

 private:
  ModelPtr model_;
};
TORCH_MODULE(Student);

}  // namespace kd
