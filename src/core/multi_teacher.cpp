#include "kd/core/multi_teacher.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {

MultiTeacherImpl::MultiTeacherImpl(std::vector<ModelPtr> teachers, MultiTeacherOptions options)
    : teachers_(std::move(teachers)), options_(std::move(options)) {
  if (teachers_.empty()) throw Error(ErrorCategory::kValue, "MultiTeacher needs at least one teacher");
  for (size_t i = 0; i < teachers_.size(); ++i) {
    if (!teachers_[i]) throw Error(ErrorCategory::kValue, fmt::format("MultiTeacher: teacher {} is null", i));
    register_module(fmt::format("teacher{}", i), teachers_[i]);
  }
  if (!(options_.temperature() > 0)) {
    throw Error(ErrorCategory::kValue, fmt::format("MultiTeacher temperature must be > 0, got {}", options_.temperature()));
  }
  if (options_.features_from() < 0 || options_.features_from() >= static_cast<int64_t>(teachers_.size())) {
    throw Error(ErrorCategory::kValue, fmt::format("MultiTeacher features_from {} is not a teacher index (0..{})",
                                                   options_.features_from(), teachers_.size() - 1));
  }
  set_weights(options_.weights().empty() ? std::vector<double>(teachers_.size(), 1.0) : options_.weights());
}

void MultiTeacherImpl::set_weights(const std::vector<double>& weights) {
  if (weights.size() != teachers_.size()) {
    throw Error(ErrorCategory::kValue,
                fmt::format("MultiTeacher: {} weights for {} teachers", weights.size(), teachers_.size()));
  }
  double sum = 0;
  for (double w : weights) {
    if (!(w >= 0) || !std::isfinite(w)) throw Error(ErrorCategory::kValue, fmt::format("MultiTeacher weight {} is not >= 0", w));
    sum += w;
  }
  if (!(sum > 0)) throw Error(ErrorCategory::kValue, "MultiTeacher weights sum to 0");
  weights_.clear();
  for (double w : weights) weights_.push_back(w / sum);
  // The weights and T as a buffer too: what fingerprints a teacher by its state (the teacher cache) sees a change.
  std::vector<double> mixture(weights_);
  mixture.push_back(options_.temperature());
  const auto values = torch::tensor(mixture, torch::kFloat64);
  if (mixture_.defined()) {
    mixture_.copy_(values);
  } else {
    mixture_ = register_buffer("mixture", values);
  }
}

ModelOutput MultiTeacherImpl::forward(const torch::Tensor& inputs) {
  const double T = options_.temperature();
  ModelOutput out;
  std::vector<torch::Tensor> weighted_log_probs;
  for (size_t i = 0; i < teachers_.size(); ++i) {
    ModelOutput o = teachers_[i]->forward(inputs);
    if (i > 0 && o.logits.sizes() != out.extras.at("teacher0.logits").sizes()) {
      throw Error(ErrorCategory::kShape, fmt::format("MultiTeacher: teacher {} logits {} differ from teacher 0's {}", i,
                                                     shape_string(o.logits), shape_string(out.extras.at("teacher0.logits"))));
    }
    if (weights_[i] > 0) weighted_log_probs.push_back(torch::log_softmax(o.logits / T, -1) + std::log(weights_[i]));
    out.extras[fmt::format("teacher{}.logits", i)] = o.logits;
    if (static_cast<int64_t>(i) == options_.features_from()) {
      out.hidden_states = std::move(o.hidden_states);
      out.attentions = std::move(o.attentions);
    }
  }
  // log Σ_i w_i p_i computed stably in log space.
  out.logits = T * torch::logsumexp(torch::stack(weighted_log_probs), 0);
  return out;
}

}  // namespace kd
