#pragma once
/// \file
/// Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>

#include "kd/losses/distill_batch.h"

namespace kd {

/// Options for DKD.
struct DKDOptions {
  /// Weight α of the target-class term TCKD (> = 0); default 1.
  TORCH_ARG(double, alpha) = 1.0;
  /// Weight β of the non-target term NCKD (> = 0); default 8, the paper's CIFAR-100 value.
  TORCH_ARG(double, beta) = 8.0;
  /// Softmax temperature T (> 0); both terms are scaled by T².
  TORCH_ARG(double, temperature) = 4.0;
  /// Ramp-in of the loss: factor min(1, w) on the whole loss, w = progress / warmup for
  /// warmup ∈ (0, 1] (a fraction of the stage) and w = stage_step / warmup for warmup > 1
  /// (a number of optimizer steps of the stage); 0 = no ramp (the default). The paper ramps
  /// over its first 20 epochs, because β·NCKD is large while the student is untrained.
  TORCH_ARG(double, warmup) = 0.0;
  /// Z-score each row of logits before the temperature (Sun et al., CVPR 2024; see
  /// functional::standardize_logits); default off.
  TORCH_ARG(bool, standardize) = false;
  /// Rows whose target equals this are not counted (padding of sequence models).
  TORCH_ARG(std::optional<int64_t>, ignore_index) = -100;
};

namespace functional {

/// The two DKD terms, each averaged over the N counted rows and scaled by T²:
///
///   p = softmax(z / T) over the C classes, g the row's target class,
///   b = [p_g, 1 − p_g]                         (binary target / non-target split),
///   p̂ = softmax(z_{c≠g} / T) over the C − 1 other classes,
///   TCKD = T²/N · Σ_r KL(b_t ‖ b_s),    NCKD = T²/N · Σ_r KL(p̂_t ‖ p̂_s),
///
/// so that Hinton's KD at temperature T equals TCKD + (1 − p_t,g)·NCKD row by row; DKD
/// weighs them freely: L = α·TCKD + β·NCKD. Everything is computed in log space
/// (log(1 − p_g) = logsumexp_{c≠g} z_c/T − logsumexp_c z_c/T), so it stays finite for
/// confident teachers. Logits [..., C] with integer targets [...]; `row_mask` (the targets'
/// shape, non-zero = counted; undefined = all) selects the rows. With no counted row both are 0.
///
/// Throws kd::Error: kShape when the logits differ or the targets do not have the logits'
/// shape without the class dimension (naming the shapes), kValue for C < 2, T ≤ 0, floating
/// or out-of-range targets at counted rows.
struct DKDTerms {
  torch::Tensor tckd;  ///< T²-scaled mean KL of the binary target / non-target split
  torch::Tensor nckd;  ///< T²-scaled mean KL among the non-target classes
};
DKDTerms dkd_terms(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                   const torch::Tensor& targets, const torch::Tensor& row_mask, double temperature);

/// The DKD loss α·TCKD + β·NCKD (without the warm-up factor, which needs the step).
///
/// Example: `auto l = kd::functional::dkd(zs, zt, labels, {}, kd::DKDOptions().beta(2.0));`
torch::Tensor dkd(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, const torch::Tensor& targets,
                  const torch::Tensor& row_mask = {}, const DKDOptions& options = {});

}  // namespace functional

/// Decoupled knowledge distillation of `batch.student.logits` from `batch.teacher.logits`
/// at the classes `batch.targets`:
///
///   L = r(step) · (α·TCKD + β·NCKD)     (see functional::dkd_terms; r the warm-up ramp),
///
/// with the logits z-scored first when `standardize` is set. Rows are counted as by
/// kd::TemperatureKL (`batch.mask` and `ignore_index`). The teacher must give full logits
/// (a top-k cache holds too little to split off the target class).
///
/// Parts reported: "tckd" and "nckd" (the weighted, ramped terms: they sum to the total)
/// and "dkd.ramp" (r).
///
/// Example:
/// ```
/// kd::DKD dkd(kd::DKDOptions().alpha(1).beta(8).temperature(4).warmup(0.25));
/// kd::LossResult r = dkd->forward(batch);   // r.parts["tckd"], r.parts["nckd"]
/// ```
class DKDImpl : public torch::nn::Cloneable<DKDImpl> {
 public:
  explicit DKDImpl(DKDOptions options = {});
  /// Validates the options (α, β ≥ 0; T > 0; warmup ≥ 0).
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  /// The warm-up factor r at `step`.
  double ramp(const StepInfo& step) const;

  DKDOptions options;
};
TORCH_MODULE(DKD);

}  // namespace kd
