#pragma once
/// \file
/// The frozen teacher.

#include <string>

#include <torch/nn/pimpl.h>

#include "kd/core/model.h"

namespace kd {

/// A frozen teacher: always in eval mode whatever `train()` is called with,
/// no parameter ever requires grad, forward runs under no-grad.
///
/// Losses that need the gradient of the teacher's task loss with respect to
/// its inputs (R1 gradient matching) call `forward_with_input_grad`; the
/// parameters still get no gradient.
///
/// Example:
/// ```
/// kd::Teacher teacher(kd::TeacherImpl::load("teacher.ts.pt", device));   // a TorchScript file
/// kd::Teacher teacher2(std::make_shared<MyNetImpl>());             // a C++ kd::Model
/// kd::ModelOutput t = teacher->forward(batch);
/// ```
class TeacherImpl : public torch::nn::Module {
 public:
  explicit TeacherImpl(ModelPtr model);

  /// A teacher from a TorchScript file (see kd::ScriptModel for the outputs it accepts).
  static std::shared_ptr<TeacherImpl> load(const std::string& path,
                                           const torch::Device& device = torch::kCPU);

  /// Forward under no-grad and in eval mode.
  ModelOutput forward(const torch::Tensor& inputs);
  /// Forward with autograd on, so a loss can differentiate with respect to
  /// `inputs` (floating-point inputs must require grad); parameters stay
  /// frozen. Integer token ids are accepted as they are: such a model puts a
  /// differentiable embedding in its extras for the loss to use.
  ModelOutput forward_with_input_grad(const torch::Tensor& inputs);

  /// Ignores `on`: a teacher is never put in training mode.
  void train(bool on = true) override;

  const ModelPtr& model() const { return model_; }

 private:
  void freeze();
  ModelPtr model_;
};
TORCH_MODULE(Teacher);

}  // namespace kd
