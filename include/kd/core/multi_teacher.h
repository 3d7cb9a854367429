#pragma once
/// \file
/// Several teachers fused into one.

#include <vector>

#include <torch/arg.h>

#include "kd/core/model.h"

namespace kd {

/// Options for MultiTeacher.
struct MultiTeacherOptions {
  /// Mixture weights, one per teacher, ≥ 0 (normalised to sum to 1); empty = uniform.
  TORCH_ARG(std::vector<double>, weights) = {};
  /// Temperature at which the distributions are mixed; use the KL loss's temperature.
  TORCH_ARG(double, temperature) = 1.0;
  /// Which teacher's hidden_states and attentions are passed on (feature losses need one).
  TORCH_ARG(int64_t, features_from) = 0;
};

/// Fuses teachers by mixing their soft distributions:
///
///   p̄ = Σ_i w_i · softmax(z_i / T),   logits = T · log p̄,
///
/// so that softmax(logits / T) is exactly the mixture p̄ and any KL loss at
/// temperature T distils the ensemble. Each teacher's own logits are kept in
/// extras as "teacher<i>.logits". Wrap it in kd::Teacher to freeze all of them.
/// Its buffer "mixture" holds the normalised weights and T, so a fingerprint of its state changes with them.
/// The weights here are fixed (or set between epochs by set_weights); to learn
/// them from the labels while distilling, train with kd::TeacherMixtureKL,
/// which reads those per-teacher logits.
///
/// Example:
/// ```
/// kd::Teacher ensemble(std::make_shared<kd::MultiTeacherImpl>(
///     std::vector<kd::ModelPtr>{cnn, resnet}, kd::MultiTeacherOptions().weights({0.7, 0.3}).temperature(4)));
/// ```
class MultiTeacherImpl : public Model {
 public:
  MultiTeacherImpl(std::vector<ModelPtr> teachers, MultiTeacherOptions options = {});
  ModelOutput forward(const torch::Tensor& inputs) override;

  /// Replaces the mixture weights (e.g. from a validation-driven rule between epochs).
  void set_weights(const std::vector<double>& weights);
  const std::vector<double>& weights() const { return weights_; }

 private:
  std::vector<ModelPtr> teachers_;
  MultiTeacherOptions options_;
  std::vector<double> weights_;
  torch::Tensor mixture_;  ///< buffer "mixture": the normalised weights, then T
};

}  // namespace kd
