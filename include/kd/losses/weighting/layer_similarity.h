#pragma once
/// \file
/// Per-layer feature weights: teacher/student cosine similarity × a sigmoid layer prior.

#include <map>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "kd/core/enum_names.h"
#include "kd/losses/layer_pair.h"
#include "kd/losses/weighting/policy.h"

namespace kd {

/// How LayerSimilarityWeighting scales its raw weights.
enum class LayerWeightNorm {
  kNone,        ///< raw weights c_i·prior(l_i), each in [0, 1] (with the clamp)
  kSumToCount,  ///< scaled to sum to P (mean 1), so the weighted loss keeps the unweighted one's scale;
                ///< all 1 when the raw weights sum to ≤ 0
};
inline constexpr EnumNames<LayerWeightNorm, 2> kLayerWeightNormNames{
    {{{LayerWeightNorm::kSumToCount, "sum_to_count"}, {LayerWeightNorm::kNone, "none"}}}};

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

/// Per-pair weights for feature alignment (FeatureL2Options::pair_weighting) —
/// the same rule at the level of a WeightedSum's terms is kd::LayerSimilarityPolicy:
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

/// Term name → the (teacher, student) hidden-state indices a LayerSimilarityPolicy compares for it.
using TermLayers = std::map<std::string, LayerPair>;

/// Options for LayerSimilarityPolicy.
struct LayerSimilarityPolicyOptions {
  /// slope k (0.5), midpoint l₀ (6), clamp_negative (true) and normalize
  /// (kSumToCount, over the weighed terms), as for LayerSimilarityWeighting.
  TORCH_ARG(LayerSimilarityWeightingOptions, similarity) = {};
  /// For terms whose loss is not a kd::LayerFeatureSource: which hidden states
  /// to compare, `{"term", {teacher_layer, student_layer}}` (negative indices
  /// count from the end; the two hidden states must have the same shape).
  /// Every key must name a term of the sum.
  TORCH_ARG(TermLayers, layers) = {};
};

/// Per-layer weighting as a kd::WeightedSum policy: each term's weight is
/// the cosine similarity of the teacher/student features it compares times a
/// sigmoid prior on its layer,
///
///   raw_k = (1/P_k)·Σ_{i ∈ pairs of term k} c_i·1/(1 + e^(−k·(l_i − l₀))),
///   c_i   = max(0, (1/B)·Σ_b cos(flatten(s_i,b), flatten(t_i,b)))   (no max without clamp_negative),
///   w_k   = M·raw_k / Σ_j raw_j  over the M weighed terms (kSumToCount; all 1 if Σ_j raw_j ≤ 0),
///   L     = Σ_k w_k·L_k,  w detached,
///
/// with l_i the (0-based) teacher layer of pair i. Which features a term has:
/// - a term listed in `layers`: hidden states `batch.teacher.hidden_states[t]`
///   and `batch.student.hidden_states[s]` of its LayerPair (one pair);
/// - otherwise a loss that is a kd::LayerFeatureSource (kd::FeatureL2): its
///   aligned pairs — the projected, normalised student features it compares,
///   so widths may differ;
/// - otherwise (e.g. a TemperatureKL term) the term is not weighed: w_k = 1.
/// Padded positions of [B, L, D] features (a [B, L] `batch.mask`) are zero on
/// both sides, so only real positions enter the cosine.
///
/// Each weight is logged as "w.<name>" by the WeightedSum (times the term's own
/// weight); extra parts "weighting.cos.<name>" give the mean c_i of each
/// weighed term (before the clamp). Cost: a FeatureL2 term's projections run a
/// second time, without gradients.
///
/// Errors (kd::Error): used outside a WeightedSum (kState); a `layers` key that
/// is not a term, or no term that can be weighed (kConfig); hidden states of
/// different shapes for a `layers` term (kShape, both shapes); a layer index
/// out of range (kValue).
///
/// Example:
/// ```
/// kd::FeatureL2 f3(kd::FeatureL2Options({{3, 1, 1.0, 256, 768}})), f9(kd::FeatureL2Options({{9, 3, 1.0, 256, 768}}));
/// kd::WeightedSum total({{"f3", f3}, {"f9", f9}, {"kl", kl}},
///                       kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().similarity(
///                           kd::LayerSimilarityWeightingOptions().midpoint(6).slope(0.5))));
/// auto r = total->forward(batch);   // r.parts["w.f3"], r.parts["w.f9"], r.parts["w.kl"] (= 1)
/// ```
class LayerSimilarityPolicyImpl : public torch::nn::Cloneable<LayerSimilarityPolicyImpl>, public WeightingPolicy {
 public:
  explicit LayerSimilarityPolicyImpl(LayerSimilarityPolicyOptions options = {});
  /// Validates the options (finite slope and midpoint).
  void reset() override;

  WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                          const WeightingContext& context) override;

  LayerSimilarityPolicyOptions options;
};
TORCH_MODULE(LayerSimilarityPolicy);

}  // namespace kd
