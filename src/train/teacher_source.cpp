#include "teacher_source.h"

#include <utility>

#include <fmt/format.h>

namespace kd::detail {
namespace {

class LiveTeacher final : public TeacherSource {
 public:
  explicit LiveTeacher(Teacher teacher) : teacher_(std::move(teacher)) {}
  void fill(DistillBatch& batch, const torch::Tensor&) override { batch.teacher = teacher_->forward(batch.inputs); }
  std::string name() const override { return "the teacher"; }

 private:
  Teacher teacher_;
};

class InputGradientTeacher final : public TeacherSource {
 public:
  explicit InputGradientTeacher(Teacher teacher) : teacher_(std::move(teacher)) {}
  void fill(DistillBatch& batch, const torch::Tensor&) override {
    if (batch.inputs.is_floating_point()) batch.inputs.requires_grad_(true);
    batch.teacher_inputs =
        batch.inputs.is_floating_point() ? batch.inputs.detach().clone().requires_grad_(true) : batch.inputs;
    batch.teacher = teacher_->forward_with_input_grad(batch.teacher_inputs);
  }
  std::string name() const override { return "the teacher"; }

 private:
  Teacher teacher_;
};

class CachedTeacher final : public TeacherSource {
 public:
  CachedTeacher(std::shared_ptr<data::TeacherCache> cache, torch::Device device)
      : cache_(std::move(cache)), device_(device) {}
  void fill(DistillBatch& batch, const torch::Tensor& rows) override { batch.teacher = cache_->lookup(rows).to(device_); }
  std::string name() const override { return fmt::format("the teacher cache '{}'", cache_->path()); }

 private:
  std::shared_ptr<data::TeacherCache> cache_;
  torch::Device device_;
};

class FunctionTeacher final : public TeacherSource {
 public:
  FunctionTeacher(std::function<ModelOutput(const torch::Tensor&)> forward, std::string name)
      : forward_(std::move(forward)), name_(std::move(name)) {}
  void fill(DistillBatch& batch, const torch::Tensor&) override { batch.teacher = forward_(batch.inputs); }
  std::string name() const override { return name_; }

 private:
  std::function<ModelOutput(const torch::Tensor&)> forward_;
  std::string name_;
};

}  // namespace

std::unique_ptr<TeacherSource> live_teacher(Teacher teacher) { return std::make_unique<LiveTeacher>(std::move(teacher)); }

std::unique_ptr<TeacherSource> input_gradient_teacher(Teacher teacher) {
  return std::make_unique<InputGradientTeacher>(std::move(teacher));
}

std::unique_ptr<TeacherSource> cached_teacher(std::shared_ptr<data::TeacherCache> cache, torch::Device device) {
  return std::make_unique<CachedTeacher>(std::move(cache), device);
}

std::unique_ptr<TeacherSource> function_teacher(std::function<ModelOutput(const torch::Tensor&)> forward,
                                                std::string name) {
  return std::make_unique<FunctionTeacher>(std::move(forward), std::move(name));
}

}  // namespace kd::detail
