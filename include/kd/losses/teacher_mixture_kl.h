#pragma once
/// \file
/// Distillation from several teachers whose mixture weights are learned from the labels.

#include <cstdint>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/distill_batch.h"

namespace kd {

/// Options for TeacherMixtureKL.
struct TeacherMixtureKLOptions {
  explicit TeacherMixtureKLOptions(int64_t teachers = 2) : teachers_(teachers) {}
  /// K, the number of teachers (batch.teacher.extras holds "teacher0.logits" .. "teacher<K−1>.logits",
  /// as kd::MultiTeacher provides them).
  TORCH_ARG(int64_t, teachers);
  /// T of the soft targets and of the student's distribution; the KL is scaled by T².
  TORCH_ARG(double, temperature) = 1.0;
  /// λ, the weight of the mixture's cross-entropy on the labels (the term that trains the weights).
  TORCH_ARG(double, label_weight) = 1.0;
  /// Starting mixture weights (≥ 0, normalised; empty = uniform).
  TORCH_ARG(std::vector<double>, initial_weights) = {};
};

/// Distils the student toward a mixture of K frozen teachers whose weights are
/// learned (a learnable parameter θ ∈ R^K owned by the loss):
///
///   w = softmax(θ),   p̄_T = Σ_k w_k · softmax(z_k / T),   p̄_1 = Σ_k w_k · softmax(z_k)
///   L = T² · KL(sg(p̄_T) ‖ softmax(z_s / T))  +  λ · (−1/B Σ_i log p̄_1,i(y_i))
///
/// (batchmean over [B, C] logits). The KL trains the student toward the current
/// mixture; the stop-gradient sg(·) keeps it from pulling the weights toward
/// whichever teacher the student already resembles. The mixture's cross-entropy
/// on the labels is the only term that moves θ, so weight flows to the
/// teachers that explain the labels best — a learned ensemble. θ trains in the
/// stage's optimizer with the loss's own parameters (Stage::loss_lr).
///
/// Parts reported: "kl", "mixture_ce", and "w.teacher<k>" (the current weights).
/// Throws kd::Error: kModel when a teacher's logits are missing from extras,
/// kShape (naming both shapes) when they and the student's disagree, kValue for
/// missing targets. Non-finite logits give a non-finite loss.
///
/// Example:
/// ```
/// kd::Teacher ensemble(std::make_shared<kd::MultiTeacherImpl>(std::vector<kd::ModelPtr>{cnn, mlp}));
/// kd::TeacherMixtureKL loss(kd::TeacherMixtureKLOptions(2).temperature(4));
/// kd::LossResult r = loss->forward(batch);   // r.parts["w.teacher0"], r.parts["w.teacher1"]
/// ```
class TeacherMixtureKLImpl : public torch::nn::Cloneable<TeacherMixtureKLImpl> {
 public:
  explicit TeacherMixtureKLImpl(TeacherMixtureKLOptions options = TeacherMixtureKLOptions());
  void reset() override;
  LossResult forward(const DistillBatch& batch);
  /// softmax(θ), detached.
  torch::Tensor weights() const;

  TeacherMixtureKLOptions options;
  torch::Tensor theta;  ///< [K] mixture logits
};
TORCH_MODULE(TeacherMixtureKL);

}  // namespace kd
