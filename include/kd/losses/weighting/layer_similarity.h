#pragma once
/// \file
/// Per-layer feature weights: teacher/student cosine similarity × a sigmoid layer prior.

#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

namespace kd {

/// How LayerSimilarityWeighting scales its raw weights.
enum class LayerWeightNorm {
  kNone,        ///< raw weights c_i·prior(l_i), each in [0, 1] (with the clamp)
  kSumToCount,  ///< scaled to sum to P (mean 1), so the weighted loss keeps the unweighted one's scale;
                ///< all 1 when the raw weights sum to ≤ 0
};

/// Options for LayerSimilarityWeighting.
struct LayerSimilarityWeightingOptions {
  /// k, the slope of the layer prior 1/(1 + e^(−k·(l − l₀))).
  TORCH_ARG(double, slope) = 0.5;
  /// l₀, the layer where the prior is ½.
  TORCH_ARG(double, midpoint) = 6.0;
  /// Clamp negative similarities to 0 (an anti-aligned pair gets no weight rather than a negative one).
  TORCH_ARG(bool, clamp_negative) = true;
  TORCH_ARG(LayerWeightNorm, normalize) = LayerWeightNorm::kSumToCount;
};

namespace functional {

/// 1/(1 + e^(−slope·(layer − midpoint))).
double sigmoid_layer_prior(double layer, double midpoint = 6.0, double slope = 0.5);

/// Mean over the batch of the cosine similarity between each example's
/// flattened features: (1/B)·Σ_b ⟨s_b, t_b⟩ / max(‖s_b‖·‖t_b‖, 1e-8).
/// `student` and `teacher` must have the same shape [B, ...] (kd::Error kShape otherwise).
torch::Tensor feature_cosine_similarity(const torch::Tensor& student, const torch::Tensor& teacher);

/// The weights of kd::LayerSimilarityWeighting, as a [P] detached tensor.
torch::Tensor layer_similarity_weights(const std::vector<torch::Tensor>& student_projected,
                                       const std::vector<torch::Tensor>& teacher,
                                       const std::vector<int64_t>& teacher_layers,
                                       const LayerSimilarityWeightingOptions& options = {});

}  // namespace functional

/// Per-pair weights for feature alignment (FeatureL2Options::pair_weighting):
///
///   raw_i = c_i · 1/(1 + e^(−k·(l_i − l₀))),
///   c_i   = max(0, (1/B)·Σ_b cos(flatten(s_i,b), flatten(t_i,b)))   (no max without clamp_negative),
///
/// with s_i the projected student features of pair i, t_i the teacher's,
/// l_i = teacher_layers[i] (the resolved, 0-based teacher hidden-state index),
/// k = slope (0.5), l₀ = midpoint (6). Pairs whose student is already close to
/// the teacher, and deeper layers, weigh more.
///
/// Normalisation (default kSumToCount): w_i = P·raw_i / Σ_j raw_j, so the
/// weights average 1; if Σ_j raw_j ≤ 0 (no pair aligned yet) all w_i = 1.
/// kNone returns raw_i. Computed in float64 without gradients, returned
/// detached as float64 on the first teacher tensor's device. kd::Error (kShape)
/// when the lists' lengths differ, a pair's shapes differ, or the list is empty.
///
/// Example:
/// ```
/// kd::FeatureL2 feat(kd::FeatureL2Options(pairs).pair_weighting(
///     kd::LayerSimilarityWeighting(kd::LayerSimilarityWeightingOptions().midpoint(6).slope(0.5))));
/// // r.parts["feat.w0"], ... log the weights each step
/// ```
struct LayerSimilarityWeighting {
  explicit LayerSimilarityWeighting(LayerSimilarityWeightingOptions options = {}) : options(options) {}

  torch::Tensor operator()(const std::vector<torch::Tensor>& student_projected,
                           const std::vector<torch::Tensor>& teacher,
                           const std::vector<int64_t>& teacher_layers) const {
    return functional::layer_similarity_weights(student_projected, teacher, teacher_layers, options);
  }

  LayerSimilarityWeightingOptions options;
};

}  // namespace kd
