#include "kd/core/teacher.h"

#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/script_model.h"

namespace kd {

TeacherImpl::TeacherImpl(ModelPtr model) : model_(std::move(model)) {
  if (!model_) throw Error(ErrorCategory::kValue, "Teacher needs a model, got a null pointer");
  register_module("model", model_);
  freeze();
}

std::shared_ptr<TeacherImpl> TeacherImpl::load(const std::string& path,
                                               const torch::Device& device) {
  return std::make_shared<TeacherImpl>(ScriptModel::load(path, device));
}

void TeacherImpl::freeze() {
  for (auto& p : model_->parameters()) {
    p.requires_grad_(false);
    p.mutable_grad() = torch::Tensor();  // grads left over from training it are not the teacher's
  }
  Module::train(false);
  model_->train(false);
}

void TeacherImpl::train(bool /*on*/) { freeze(); }

ModelOutput TeacherImpl::forward(const torch::Tensor& inputs) {
  torch::NoGradGuard no_grad;
  if (model_->is_training()) freeze();  // someone reached past the wrapper
  return model_->forward(inputs);
}

ModelOutput TeacherImpl::forward_with_input_grad(const torch::Tensor& inputs) {
  if (inputs.is_floating_point() && !inputs.requires_grad()) {
    throw Error(ErrorCategory::kState,
                "Teacher::forward_with_input_grad: inputs do not require grad; call "
                "inputs.requires_grad_(true) first (or use forward())");
  }
  torch::AutoGradMode grad_on(true);
  if (model_->is_training()) freeze();
  return model_->forward(inputs);
}

}  // namespace kd
