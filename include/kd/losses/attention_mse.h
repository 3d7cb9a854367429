#pragma once
/// \file
/// Attention transfer: MSE between teacher and student attention maps.

#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/layer_pair.h"

namespace kd {

/// A (teacher layer, student layer, weight) match over `ModelOutput::attentions`;
/// the same struct as FeatureL2's (its widths are ignored here).
using AttentionPair = LayerPair;

/// How heads are matched when the models have different head counts.
enum class HeadMapping {
  kMean,     ///< average all heads of each model: [B, H, L, L] → [B, 1, L, L]; any head counts
  kGrouped,  ///< teacher heads split into H_s contiguous groups of H_t/H_s, each group averaged to
             ///< match student head h; needs H_t % H_s == 0. Equal counts: head-by-head comparison.
};
inline constexpr EnumNames<HeadMapping, 2> kHeadMappingNames{
    {{{HeadMapping::kGrouped, "grouped"}, {HeadMapping::kMean, "mean"}}}};

/// How AttentionMSE averages the squared differences.
enum class AttentionReduction {
  kMean,    ///< mean over every counted (b, h, query, key) element: ~1/L² of a row's distance, tiny for long L
  kRowSum,  ///< summed over the keys, mean over counted (b, h, query) rows: each query's squared L2 distance
            ///< between the two attention distributions, L times kMean for unmasked maps
};
inline constexpr EnumNames<AttentionReduction, 2> kAttentionReductionNames{
    {{{AttentionReduction::kMean, "mean"}, {AttentionReduction::kRowSum, "row_sum"}}}};

/// Options for AttentionMSE.
struct AttentionMSEOptions {
  AttentionMSEOptions() = default;
  /* implicit */ AttentionMSEOptions(std::vector<LayerPair> pairs) : pairs_(std::move(pairs)) {}

  /// Layer pairs over `ModelOutput::attentions`; default: last teacher layer vs last student layer.
  TORCH_ARG(std::vector<LayerPair>, pairs) = {LayerPair{-1, -1}};
  /// Head matching; default grouped (head by head when the counts are equal).
  TORCH_ARG(HeadMapping, heads) = HeadMapping::kGrouped;
  /// Compare log-probabilities log(max(p, eps)) instead of probabilities. The
  /// log spreads out small attention weights; the clamp makes probabilities
  /// below `eps` compare equal (a causal mask's zeros give 0, not log 0), and
  /// gives them no gradient.
  TORCH_ARG(bool, log_space) = false;
  /// Clamp for log_space (> 0).
  TORCH_ARG(double, eps) = 1e-8;
  /// kMean (default) or kRowSum. Softmax rows over L keys hold values near 1/L,
  /// so the element mean shrinks like 1/L² and, beside a feature or KL term,
  /// contributes almost nothing at L in the hundreds; kRowSum does not shrink with L.
  TORCH_ARG(AttentionReduction, reduction) = AttentionReduction::kMean;
};

namespace functional {

/// Masked MSE between attention maps `student` [B, H_s, L, L] and `teacher`
/// [B, H_t, L, L] after head mapping (and the log when `options.log_space()`):
///
///   L = Σ_{b,h,q,k} v(b,q,k) · (a_s − a_t)² / (H · Σ_{b,q,k} v(b,q,k)),
///
/// or with AttentionReduction::kRowSum the same sum over H · (the counted query
/// rows: Σ_{b,q} max_k v(b,q,k)), i.e. the mean over query rows of Σ_k (a_s − a_t)².
///
/// H the compared head count (1 for kMean, H_s for kGrouped). With a [B, L]
/// `mask` m, v(b,q,k) = m(b,q)·m(b,k): only real query rows and real key
/// columns count, so values at padded positions (even NaN) do not matter;
/// a [B] mask keeps or drops whole examples; undefined mask: v ≡ 1.
/// Probabilities are head-averaged before the log. Errors: kd::Error kShape
/// (both shapes named) for maps that are not [B, H, L, L] with equal B and L,
/// for a mask of the wrong shape, and for H_t % H_s != 0 under kGrouped.
///
/// Example: `auto l = kd::functional::attention_mse(a_s, a_t.detach(), mask, kd::AttentionMSEOptions().heads(kd::HeadMapping::kMean));`
torch::Tensor attention_mse(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& mask,
                            const AttentionMSEOptions& options = {});

}  // namespace functional

/// Attention-transfer loss over matched layers:
///
///   L = Σ_i weight_i · attention_mse(A_s[student_i], A_t[teacher_i], batch.mask)
///
/// over `batch.student.attentions` / `batch.teacher.attentions` (attention
/// probabilities, [B, H, L, L]); see functional::attention_mse. Teacher maps
/// are detached. Parts: "attn" (the total) and "attn.<i>" (pair i's
/// unweighted MSE). A layer index out of range throws kd::Error (kValue)
/// naming the index and the number of attention maps; non-finite values at
/// counted positions give a non-finite loss.
///
/// Example:
/// ```
/// kd::AttentionMSE attn(kd::AttentionMSEOptions({{/*teacher=*/5, /*student=*/1}, {-1, -1, /*weight=*/2.0}})
///                           .heads(kd::HeadMapping::kGrouped));
/// kd::LossResult r = attn->forward(batch);   // r.parts["attn"], r.parts["attn.0"], ...
/// ```
class AttentionMSEImpl : public torch::nn::Cloneable<AttentionMSEImpl> {
 public:
  explicit AttentionMSEImpl(AttentionMSEOptions options = {});
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  AttentionMSEOptions options;

 private:
  bool said_skipped_ = false;  // pairs skipped for a shallower student (dynamic depth) are logged once
};
TORCH_MODULE(AttentionMSE);

}  // namespace kd
