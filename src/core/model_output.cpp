#include "kd/core/model_output.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd {
namespace {

template <typename Fn>
ModelOutput map_tensors(const ModelOutput& in, Fn fn) {
  ModelOutput out;
  if (in.logits.defined()) out.logits = fn(in.logits);
  // Undefined entries stay: a teacher cache fills only the layers the losses read.
  for (const auto& h : in.hidden_states) out.hidden_states.push_back(h.defined() ? fn(h) : h);
  for (const auto& a : in.attentions) out.attentions.push_back(a.defined() ? fn(a) : a);
  for (const auto& [name, t] : in.extras) out.extras[name] = t.defined() ? fn(t) : t;
  return out;
}

}  // namespace

ModelOutput ModelOutput::to(const torch::Device& device) const {
  return map_tensors(*this, [&](const torch::Tensor& t) { return t.to(device); });
}

ModelOutput ModelOutput::detach() const {
  return map_tensors(*this, [](const torch::Tensor& t) { return t.detach(); });
}

int64_t ModelOutput::batch_size() const {
  if (!logits.defined() || logits.dim() == 0) {
    throw Error(ErrorCategory::kModel, "ModelOutput has no logits, so its batch size is unknown");
  }
  return logits.size(0);
}

std::string shape_string(const torch::Tensor& t) {
  if (!t.defined()) return "[undefined]";
  return fmt::format("[{}]", fmt::join(t.sizes().vec(), ", "));
}

int64_t skipped_layers(const ModelOutput& output) {
  const auto it = output.extras.find(kSkippedLayers);
  return it == output.extras.end() || !it->second.defined() ? 0 : it->second.item<int64_t>();
}

void check_logits_comparable(const ModelOutput& student, const ModelOutput& teacher) {
  if (!student.logits.defined() || !teacher.logits.defined()) {
    throw Error(ErrorCategory::kModel,
                fmt::format("cannot compare logits: the {} output has none; make the model's forward "
                            "return logits",
                            student.logits.defined() ? "teacher" : "student"));
  }
  if (student.logits.sizes() != teacher.logits.sizes()) {
    const bool classes_differ = student.logits.dim() == teacher.logits.dim() &&
                                student.logits.size(-1) != teacher.logits.size(-1);
    throw Error(ErrorCategory::kShape,
                fmt::format("student logits {} and teacher logits {} cannot be compared{}",
                            shape_string(student.logits), shape_string(teacher.logits),
                            classes_differ ? fmt::format(": the student predicts {} classes, the teacher {}; "
                                                         "give both models the same number of outputs",
                                                         student.logits.size(-1), teacher.logits.size(-1))
                                           : "; feed both models the same batch"));
  }
}

}  // namespace kd
