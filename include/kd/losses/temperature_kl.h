#pragma once
/// \file
/// Hinton's soft-target loss, with forward KL, reverse KL and generalized JSD,
/// masked sequence logits, chunked computation and sparse top-k teachers.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>

#include "kd/core/enum_names.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/schedule.h"

namespace kd {

/// Which divergence between the softened teacher p_t and student p_s distributions.
enum class KLMode {
  kForward,  ///< KL(p_t ‖ p_s): mass-covering, Hinton's soft-target loss (the default)
  kReverse,  ///< KL(p_s ‖ p_t): mode-seeking
  kJSD,      ///< generalized Jensen–Shannon divergence JSD(β), see TemperatureKLOptions::beta
};
inline constexpr EnumNames<KLMode, 3> kKLModeNames{
    {{{KLMode::kForward, "forward"}, {KLMode::kReverse, "reverse"}, {KLMode::kJSD, "jsd"}}}};

/// Options for TemperatureKL.
struct TemperatureKLOptions {
  /// Softmax temperature T (> 0). Both distributions are softened by T and the
  /// loss is scaled by T² so gradient magnitudes stay comparable across T.
  TORCH_ARG(double, temperature) = 4.0;
  /// When set, the temperature is `temperature_schedule(batch.step.progress)` and
  /// `temperature` is ignored (module only; the functional forms use `temperature`).
  TORCH_ARG(std::optional<Schedule>, temperature_schedule) = std::nullopt;
  /// The divergence; default forward KL.
  TORCH_ARG(KLMode, mode) = KLMode::kForward;
  /// β ∈ [0, 1] of kJSD (ignored by the other modes), default 0.5. The mixture is
  /// m = β·p_t + (1−β)·p_s and JSD(β) = β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m), as in
  /// TRL's `GKDTrainer.generalized_jsd_loss`, including its end points: β = 0 is
  /// forward KL(p_t ‖ p_s) and β = 1 is reverse KL(p_s ‖ p_t) (the formula itself
  /// would give 0 there).
  TORCH_ARG(double, beta) = 0.5;
  /// Positions whose `batch.targets` equal this value are not counted (module
  /// only; padding/prompt tokens of sequence models, as in Hugging Face's -100).
  /// Applied when the targets are integer class indices with the logits' shape
  /// minus the class dimension; std::nullopt never looks at the targets.
  TORCH_ARG(std::optional<int64_t>, ignore_index) = -100;
  /// Rows (positions) of the flattened [N, V] logits processed at a time; 0 = all
  /// at once. Temporaries are O(chunk_size·V), so [B, L, V] logits never get a
  /// full-size softmax copy per model; the result changes only by floating-point
  /// summation order. Measured on [8, 512, 32000] float32 (bench/KL_MEMORY.md):
  /// forward + backward peak 1.03× one logits tensor (the gradient itself is 1×)
  /// at the default 64, 3.00× with 0.
  TORCH_ARG(int64_t, chunk_size) = 64;
  /// Logit standardization (Sun et al., "Logit Standardization in Knowledge
  /// Distillation", CVPR 2024): z-score each row of both models' logits
  /// (functional::standardize_logits) before the temperature, so the student
  /// matches the teacher's logit relations rather than their scale. Module
  /// only; needs full teacher logits (not a top-k teacher). Default off.
  TORCH_ARG(bool, standardize) = false;
};

namespace functional {

/// Each row (last dimension) of `logits` z-scored, as logit standardization defines it:
///
///   z' = (z − mean(z)) / (std(z) + eps),   std with Bessel's correction (torch.std's default),
///
/// differentiable. Example: `auto zs = kd::functional::standardize_logits(batch.student.logits);`
torch::Tensor standardize_logits(const torch::Tensor& logits, double eps = 1e-7);

/// The softened divergence scaled by T², averaged over the counted rows ("batchmean"):
///
///   L = T² / N · Σ_{counted rows r} D(p_t,r , p_s,r),   p = softmax(z / T) over the last dimension,
///
/// with D by `options.mode()`:
/// - kForward: Σ_c p_t(c)·(log p_t(c) − log p_s(c))
/// - kReverse: Σ_c p_s(c)·(log p_s(c) − log p_t(c))
/// - kJSD:     β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m),  m = β·p_t + (1−β)·p_s  (β = 0: kForward, β = 1: kReverse).
///
/// Rows are all positions but the last dimension: [B, C] logits have B rows,
/// [B, L, V] logits B·L rows. N is the number of counted rows (B for [B, C]; the
/// number of real positions for masked [B, L, V]), i.e. a per-token mean for
/// sequences — note that torch.nn.functional.kl_div(reduction="batchmean")
/// divides by B alone for 3-D input. With no counted row the loss is 0.
///
/// The gradient with respect to both logits is produced chunk by chunk in the
/// backward pass (a custom autograd function), so peak memory stays one
/// logits-size gradient plus O(chunk_size·V) temporaries. For forward KL,
/// ∂L/∂z_s = T/N · (softmax(z_s/T) − p_t) on counted rows and 0 elsewhere.
///
/// Throws kd::Error: kShape when the logits' shapes differ (naming both), kValue
/// for T ≤ 0, β ∉ [0, 1] or a negative chunk size. Non-finite values at counted
/// rows give a non-finite loss (kd::StagedTrainer's non-finite policy decides).
///
/// Example: `auto l = kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(3));`
torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const TemperatureKLOptions& options = {});

/// As above, counting only the rows where `row_mask` (bool or 0/1, the logits'
/// shape without the last dimension; undefined = all rows) is non-zero.
///
/// Example: `auto l = kd::functional::temperature_kl(zs, zt, attention_mask, {});   // [B, L, V], [B, L]`
torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const torch::Tensor& row_mask, const TemperatureKLOptions& options);

/// The loss against a sparse teacher that kept only its k largest logits per row:
/// `teacher_topk_logits` [..., k] (floating) at class indices `teacher_topk_indices`
/// [..., k] (integer, in [0, V)), the leading dimensions those of `student_logits` [..., V].
///
/// Rule for the missing mass: the teacher's distribution is the softmax of its
/// k logits / T, renormalised over the kept classes S (mass 0 outside S), and
/// every sum runs over S only:
/// - kForward (and kJSD with β = 0): the student's log-probabilities are the full
///   log_softmax(z_s/T) over all V classes gathered at S (not renormalised), so
///   L = T²/N · Σ_r Σ_{c∈S} p_t(c)·(log p_t(c) − log p_s(c)); it is ≥ 0 and also
///   pulls the student's mass outside S into S. With k = V it is the dense loss.
/// - kReverse and kJSD (β > 0), which weigh by the student's own probabilities:
///   the student is renormalised over S, p̂_s = softmax(z_s[S]/T), and the
///   divergence is taken between the two distributions on S. (With the
///   unnormalised student these would not be divergences — reverse KL over S
///   is minimised by putting mass 1/e on S.)
///
/// Example:
/// ```
/// auto l = kd::functional::temperature_kl_topk(zs, t.extras.at("topk_logits"), t.extras.at("topk_indices"),
///                                              batch.mask, kd::TemperatureKLOptions().temperature(2));
/// ```
torch::Tensor temperature_kl_topk(const torch::Tensor& student_logits, const torch::Tensor& teacher_topk_logits,
                                  const torch::Tensor& teacher_topk_indices, const torch::Tensor& row_mask = {},
                                  const TemperatureKLOptions& options = {});

/// The rows a TemperatureKL module counts, as a bool tensor of the logits' shape
/// without the last dimension:
/// - `mask` (1 = real): used when its shape is exactly that, or when it is [B]
///   for [B, L, V] logits (whole sequences dropped). A mask of another shape on
///   [B, C] logits is an input-padding mask of a pooled classifier and is
///   ignored; on ≥ 3-D logits it is kd::Error (kShape).
/// - `targets`: when `ignore_index` is set and the targets are integer, rows whose
///   target equals it are dropped; integer targets of another shape are
///   kd::Error (kShape). Floating targets are not class indices and are ignored.
///
/// Example: `auto rows = kd::functional::kl_counted_rows(zs, batch.mask, batch.targets, -100);`
torch::Tensor kl_counted_rows(const torch::Tensor& student_logits, const torch::Tensor& mask,
                              const torch::Tensor& targets, std::optional<int64_t> ignore_index);

}  // namespace functional

/// Soft-target distillation loss of `batch.student.logits` against the teacher:
///
///   L = T² / N · Σ_{counted rows r} D(p_t,r , p_s,r),   p = softmax(z / T),
///
/// D forward KL(p_t ‖ p_s) by default, reverse KL or JSD(β) by `mode` (see
/// functional::temperature_kl for D and the reduction).
///
/// The teacher is `batch.teacher.logits`; when those are undefined, the sparse
/// teacher `batch.teacher.extras["topk_logits"]` / `["topk_indices"]` (e.g. from
/// kd::data::TeacherCache with top_k > 0; see functional::temperature_kl_topk for
/// the rule). Counted rows come from `batch.mask` and `batch.targets` with
/// `ignore_index` (functional::kl_counted_rows). The temperature follows
/// `temperature_schedule` at `batch.step.progress` when one is set.
///
/// With `standardize`, both logits are z-scored per row first (functional::standardize_logits).
///
/// Parts reported: "kl" (the loss, whatever the mode) and "kl.temperature" (T used).
///
/// Example:
/// ```
/// kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(4.0));
/// kd::LossResult r = kl->forward(batch);   // r.parts["kl"], r.parts["kl.temperature"]
/// kd::TemperatureKL gkd(kd::TemperatureKLOptions().mode(kd::KLMode::kJSD).beta(0.5).temperature(1.0)
///                           .temperature_schedule(kd::Schedule::linear(4.0, 1.0)));
/// ```
class TemperatureKLImpl : public torch::nn::Cloneable<TemperatureKLImpl> {
 public:
  explicit TemperatureKLImpl(TemperatureKLOptions options = {});
  /// Validates the options (T or the schedule's end points > 0, β ∈ [0, 1], chunk_size ≥ 0).
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  /// The temperature used at `progress`.
  double temperature_at(double progress) const;

  TemperatureKLOptions options;
};
TORCH_MODULE(TemperatureKL);

}  // namespace kd
