#pragma once
/// \file
/// Feature alignment: L2 between matched teacher and student layer outputs.

#include <functional>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/layer_pair.h"
#include "kd/losses/loss_traits.h"

namespace kd {

/// How a student-side projection's weights start.
enum class ProjectionInit {
  kDefault,     ///< LibTorch's Linear/Conv default: Kaiming-uniform(a=√5) weight, uniform(±1/√fan_in) bias
  kXavier,      ///< Xavier/Glorot-uniform weight (gain 1), zero bias
  kOrthogonal,  ///< (semi-)orthogonal weight (gain 1), zero bias: preserves norms when widening
  kIdentity,    ///< eye on the leading min(student_dim, teacher_dim) block, zeros elsewhere, zero bias:
                ///< starts as "copy (or truncate / zero-pad) the student's features"
};
inline constexpr EnumNames<ProjectionInit, 4> kProjectionInitNames{
    {{{ProjectionInit::kDefault, "default"},
      {ProjectionInit::kXavier, "xavier"},
      {ProjectionInit::kOrthogonal, "orthogonal"},
      {ProjectionInit::kIdentity, "identity"}}}};

/// Normalisation applied to both sides (after the projection) before the distance,
/// over the feature dimension (channels for [B, C, H, W], the last one otherwise).
enum class FeatureNorm {
  kNone,         ///< compare raw features
  kL2,           ///< x / max(‖x‖₂, 1e-12): compares directions only (F.normalize)
  kStandardize,  ///< (x − mean) / √(var + 1e-5), biased var: a layer norm without affine parameters
};
inline constexpr EnumNames<FeatureNorm, 3> kFeatureNormNames{
    {{{FeatureNorm::kNone, "none"}, {FeatureNorm::kL2, "l2"}, {FeatureNorm::kStandardize, "standardize"}}}};

/// What to do when [B, C, H, W] features' spatial sizes differ.
enum class SpatialMismatch {
  kError,         ///< throw kd::Error (kShape) naming both shapes
  kAdaptivePool,  ///< adaptive-average-pool both maps to the smaller height and the smaller width
};
inline constexpr EnumNames<SpatialMismatch, 2> kSpatialMismatchNames{
    {{{SpatialMismatch::kError, "error"}, {SpatialMismatch::kAdaptivePool, "adaptive_pool"}}}};

/// Per-pair weights computed from the features being compared (e.g. cosine
/// similarity × a layer prior). Receives the projected (and normalised)
/// student features, the matching teacher features (both detached; padded
/// positions of [B, L, D] features under a [B, L] mask are zero on both sides,
/// so only real positions count), and the resolved (non-negative) teacher
/// layer indices; returns a [P] tensor, one weight per pair. The weights are
/// treated as constants (detached).
using PairWeighting = std::function<torch::Tensor(const std::vector<torch::Tensor>& student_projected,
                                                  const std::vector<torch::Tensor>& teacher,
                                                  const std::vector<int64_t>& teacher_layers)>;

/// Options for FeatureL2.
struct FeatureL2Options {
  FeatureL2Options() = default;
  /* implicit */ FeatureL2Options(std::vector<LayerPair> pairs) : pairs_(std::move(pairs)) {}

  /// Layer pairs over `ModelOutput::hidden_states` (at least one). A pair with
  /// different `student_dim` and `teacher_dim` gets a learnable projection.
  TORCH_ARG(std::vector<LayerPair>, pairs);
  /// Initialisation of the projections' weights.
  TORCH_ARG(ProjectionInit, init) = ProjectionInit::kDefault;
  /// Normalisation before the distance; default none.
  TORCH_ARG(FeatureNorm, normalize) = FeatureNorm::kNone;
  /// Spatial size mismatch policy for [B, C, H, W] features; default error.
  TORCH_ARG(SpatialMismatch, spatial_mismatch) = SpatialMismatch::kError;
  /// Optional per-pair weighting hook (see PairWeighting); empty = all 1.
  TORCH_ARG(PairWeighting, pair_weighting) = nullptr;
};

namespace functional {

/// Mean squared error between one student feature map (already projected) and
/// one teacher feature map, after `normalize`:
///
///   L = Σ m · (n(s) − n(t))² / Σ m,
///
/// the mean over all elements, where m is 1 everywhere except for [B, L, D]
/// features with a [B, L] `mask`, which drops padded positions (m = mask
/// broadcast over D). Padded positions are zeroed (masked_fill) before any
/// arithmetic, so NaN or Inf there changes neither the value nor the gradient
/// (which is 0 at those positions). Shapes must match exactly (kd::Error kShape
/// naming both otherwise). The teacher side is used as given (not detached here).
///
/// Example: `auto l = kd::functional::feature_mse(s, t.detach(), kd::FeatureNorm::kL2);`
torch::Tensor feature_mse(const torch::Tensor& student, const torch::Tensor& teacher,
                          FeatureNorm normalize = FeatureNorm::kNone, const torch::Tensor& mask = {});

}  // namespace functional

/// Feature-alignment loss over matched hidden states:
///
///   L = Σ_i weight_i · w_i · MSE(n(P_i(s_{student_i})), n(t_{teacher_i})),
///
/// - P_i: identity, or a learnable projection student_dim → teacher_dim
///   (registered as module "proj<i>", a torch::nn::Linear). [B, D] and
///   [B, L, D] features go through it as a linear layer on the last dimension;
///   [B, C, H, W] features as a 1×1 convolution with the same weights
///   (weight viewed as [teacher_dim, student_dim, 1, 1]). Projections are
///   created in reset(), so an optimizer built before the first forward sees them.
/// - n: FeatureL2Options::normalize, over the feature dimension.
/// - MSE: functional::feature_mse — the mean over all elements (padded
///   positions of [B, L, D] features excluded when `batch.mask` is [B, L]; they
///   are zeroed before the projection, so NaN or Inf there is harmless).
/// - w_i: 1, or the detached output of FeatureL2Options::pair_weighting.
/// - Teacher features are detached: the loss never trains the teacher.
///
/// Parts: "feat" (the total, detached), "feat.<i>" (pair i's unweighted MSE),
/// and "feat.w<i>" (w_i) when a pair_weighting hook is set.
///
/// Errors (kd::Error): a layer index out of range (kValue, names the index and
/// the number of hidden states); widths that disagree with the pair's
/// student_dim/teacher_dim, batch or sequence sizes that differ, spatial sizes
/// that differ under SpatialMismatch::kError, a mask that does not fit
/// (kShape, names both features' shapes). Non-finite features at real
/// positions give a non-finite loss (kd::StagedTrainer's policy decides).
///
/// As a kd::LayerFeatureSource it hands its aligned pairs to
/// kd::LayerSimilarityPolicy, which weighs a FeatureL2 term of a WeightedSum
/// by their cosine similarity and layer.
///
/// Example:
/// ```
/// kd::FeatureL2 feat(kd::FeatureL2Options({{/*teacher=*/1, /*student=*/1, 1.0, /*student_dim=*/32, /*teacher_dim=*/64},
///                                          {-1, -1}})
///                        .init(kd::ProjectionInit::kOrthogonal)
///                        .normalize(kd::FeatureNorm::kL2));
/// kd::LossResult r = feat->forward(batch);   // r.parts["feat"], r.parts["feat.0"], ...
/// optimizer.add_param_group({feat->parameters()});
/// ```
class FeatureL2Impl : public torch::nn::Cloneable<FeatureL2Impl>, public LayerFeatureSource {
 public:
  explicit FeatureL2Impl(FeatureL2Options options);
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  /// The projection of pair `i`, or an empty holder when the pair has none.
  torch::nn::Linear projection(size_t i) const { return projections_.at(i); }

  /// Each pair's projected, normalised student features and its teacher
  /// features, as forward() compares them (no gradients; padding zeroed).
  std::vector<AlignedFeatures> aligned_features(const DistillBatch& batch) override;

  FeatureL2Options options;

 private:
  struct Aligned {
    std::vector<torch::Tensor> students, teachers, padding;  // padding: [B, L, 1] bool or undefined
    std::vector<int64_t> teacher_layers, student_layers;      // resolved indices
    std::vector<size_t> pairs;  // the pair each entry is; a pair whose student layer did not run has none
  };
  Aligned align(const DistillBatch& batch);

  std::vector<torch::nn::Linear> projections_;
  bool said_skipped_ = false;  // pairs skipped for a shallower student (dynamic depth) are logged once
};
TORCH_MODULE(FeatureL2);

}  // namespace kd
