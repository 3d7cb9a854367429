#pragma once
/// \file
/// Cross-entropy against the ground-truth labels.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/distill_batch.h"

namespace kd {

/// Options for HardLabelCE.
struct HardLabelCEOptions {
  /// Mass ε spread uniformly over all classes, in [0, 1); default 0.
  TORCH_ARG(double, label_smoothing) = 0.0;
  /// Targets equal to this are ignored (padding in sequence models); default -100.
  TORCH_ARG(int64_t, ignore_index) = -100;
};

namespace functional {

/// Mean cross-entropy over the N non-ignored targets, as torch.nn.functional.cross_entropy
/// with `label_smoothing` and `ignore_index` (reduction "mean"):
///
///   L = −1/N Σ_i [(1−ε)·log p_i(y_i) + ε/C · Σ_c log p_i(c)],  p_i = softmax(z_i).
///
/// Logits [B, C] with targets [B], or [B, L, C] with targets [B, L] (classes last,
/// unlike torch's [B, C, L]). With no counted target the loss is 0 (torch gives NaN).
/// Floating-point targets of the logits' own shape are soft targets (functional::soft_target_ce),
/// as mixing augmentations (kd::data::CutMix, TokenMix) make them.
///
/// Throws kd::Error: kValue for missing targets or a counted target outside [0, C);
/// kShape naming both shapes when the targets are not the logits' shape without
/// the class dimension. Non-finite logits at counted positions give a non-finite loss.
///
/// Example: `auto l = kd::functional::hard_label_ce(logits, labels, kd::HardLabelCEOptions().label_smoothing(0.1));`
torch::Tensor hard_label_ce(const torch::Tensor& logits, const torch::Tensor& targets,
                            const HardLabelCEOptions& options = {});

/// Cross-entropy against soft targets y (probabilities, the logits' shape), as
/// torch.nn.functional.cross_entropy with probability targets and `label_smoothing`:
///
///   L = −1/N Σ_i Σ_c y'_ic log p_i(c),  y' = (1−ε)·y + ε/C,  p_i = softmax(z_i),  N rows.
///
/// kd::Error (kValue) for targets that are not distributions over the classes (a negative entry, or
/// a row not summing to 1 within 1e-3).
///
/// Example: `auto l = kd::functional::soft_target_ce(logits, 0.7 * onehot_a + 0.3 * onehot_b);`
torch::Tensor soft_target_ce(const torch::Tensor& logits, const torch::Tensor& targets,
                             const HardLabelCEOptions& options = {});

}  // namespace functional

/// Cross-entropy of `batch.student.logits` against `batch.targets`:
///
///   L = −1/N Σ_{counted i} [(1−ε)·log p_i(y_i) + ε/C · Σ_c log p_i(c)],  p_i = softmax(z_i),
///
/// N the counted targets (see functional::hard_label_ce). When `batch.mask` has
/// the targets' shape, its zeros are ignored too (padding of sequence models).
/// Part reported: "ce".
///
/// Example:
/// ```
/// kd::HardLabelCE ce(kd::HardLabelCEOptions().label_smoothing(0.1));
/// kd::LossResult r = ce->forward(batch);   // r.parts["ce"]
/// ```
class HardLabelCEImpl : public torch::nn::Cloneable<HardLabelCEImpl> {
 public:
  explicit HardLabelCEImpl(HardLabelCEOptions options = {});
  /// Validates the options (label_smoothing ∈ [0, 1)).
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  HardLabelCEOptions options;
};
TORCH_MODULE(HardLabelCE);

}  // namespace kd
