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
  /// Mass spread uniformly over all classes, in [0, 1).
  TORCH_ARG(double, label_smoothing) = 0.0;
  /// Targets equal to this are ignored (padding in sequence models).
  TORCH_ARG(int64_t, ignore_index) = -100;
};

namespace functional {

/// Mean cross-entropy over non-ignored targets:
///   L = −1/N Σ_i [(1−ε)·log p(y_i) + ε/C · Σ_c log p(c)],  p = softmax(z).
/// Logits [B, C] with targets [B], or [B, L, C] with targets [B, L].
torch::Tensor hard_label_ce(const torch::Tensor& logits, const torch::Tensor& targets,
                            const HardLabelCEOptions& options = {});

}  // namespace functional

/// Cross-entropy of `batch.student.logits` against `batch.targets`. Part reported: "ce".
///
/// Example: `kd::HardLabelCE ce(kd::HardLabelCEOptions().label_smoothing(0.1));`
class HardLabelCEImpl : public torch::nn::Cloneable<HardLabelCEImpl> {
 public:
  explicit HardLabelCEImpl(HardLabelCEOptions options = {});
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  HardLabelCEOptions options;
};
TORCH_MODULE(HardLabelCE);

}  // namespace kd
