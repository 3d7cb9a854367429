#include "kd/core/student.h"

#include "kd/core/error.h"
#include "kd/core/script_model.h"

namespace kd {

StudentImpl::StudentImpl(ModelPtr model) : model_(std::move(model)) {
  if (!model_) throw Error(ErrorCategory::kValue, "Student needs a model, got a null pointer");
  register_module("model", model_);
}

std::shared_ptr<StudentImpl> StudentImpl::load(const std::string& path,
                                               const torch::Device& device) {
  auto model = ScriptModel::load(path, device);
  for (auto& p : model->parameters()) p.requires_grad_(true);
  return std::make_shared<StudentImpl>(model);
}

}  // namespace kd
