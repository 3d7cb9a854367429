#pragma once
/// \file
/// Hinton's soft-target loss.

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/arg.h>

#include "kd/losses/distill_batch.h"

namespace kd {

/// Options for TemperatureKL.
struct TemperatureKLOptions {
  /// Softmax temperature T (> 0). Both distributions are softened by T and the
  /// loss is scaled by T² so gradient magnitudes stay comparable across T.
  TORCH_ARG(double, temperature) = 4.0;
};

namespace functional {

/// KL(p_t^T ‖ p_s^T)·T², averaged over the batch ("batchmean"):
///
///   L = T² / B · Σ_b Σ_c p_t(c) · (log p_t(c) − log p_s(c)),
///   p = softmax(z / T).
///
/// `student_logits` and `teacher_logits` are [B, C].
///
/// Example: `auto l = kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(3));`
torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const TemperatureKLOptions& options = {});

}  // namespace functional

/// Soft-target distillation loss on `batch.student.logits` vs `batch.teacher.logits`
/// (see functional::temperature_kl for the formula). Part reported: "kl".
///
/// Example:
/// ```
/// kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(4.0));
/// kd::LossResult r = kl->forward(batch);   // r.parts["kl"]
/// ```
class TemperatureKLImpl : public torch::nn::Cloneable<TemperatureKLImpl> {
 public:
  explicit TemperatureKLImpl(TemperatureKLOptions options = {});
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  TemperatureKLOptions options;
};
TORCH_MODULE(TemperatureKL);

}  // namespace kd
