#include "kd/losses/weighting/layer_similarity.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "kd/losses/loss_traits.h"

namespace kd {
namespace functional {

double sigmoid_layer_prior(double layer, double midpoint, double slope) {
  return 1.0 / (1.0 + std::exp(-slope * (layer - midpoint)));
}

torch::Tensor feature_cosine_similarity(const torch::Tensor& student, const torch::Tensor& teacher) {
  if (!student.defined() || !teacher.defined() || student.sizes() != teacher.sizes() || student.dim() < 1 ||
      student.size(0) < 1) {
    throw Error(ErrorCategory::kShape,
                fmt::format("feature_cosine_similarity: student {} and teacher {} features must have the same "
                            "shape [B, ...] with B >= 1 (project the student's features to the teacher's width first)",
                            student.defined() ? shape_string(student) : std::string("(undefined)"),
                            teacher.defined() ? shape_string(teacher) : std::string("(undefined)")));
  }
  torch::NoGradGuard no_grad;
  const auto s = student.detach().reshape({student.size(0), -1}).to(torch::kFloat64);
  const auto t = teacher.detach().reshape({teacher.size(0), -1}).to(s.device(), torch::kFloat64);
  const auto dot = (s * t).sum(1);
  const auto norms = (s.norm(2, 1) * t.norm(2, 1)).clamp_min(1e-8);
  return (dot / norms).mean();
}

torch::Tensor layer_similarity_weights(const std::vector<torch::Tensor>& student_projected,
                                       const std::vector<torch::Tensor>& teacher,
                                       const std::vector<int64_t>& teacher_layers,
                                       const LayerSimilarityWeightingOptions& options) {
  const size_t P = teacher.size();
  if (P == 0 || student_projected.size() != P || teacher_layers.size() != P) {
    throw Error(ErrorCategory::kShape,
                fmt::format("layer_similarity_weights: got {} student features, {} teacher features and {} layer "
                            "indices; they must be equally many (one per pair) and at least one",
                            student_projected.size(), P, teacher_layers.size()));
  }
  torch::NoGradGuard no_grad;
  const auto device = teacher[0].device();
  std::vector<double> raw(P);
  double total = 0;
  for (size_t i = 0; i < P; ++i) {
    double c;
    try {
      c = feature_cosine_similarity(student_projected[i], teacher[i]).item<double>();
    } catch (const Error& e) {
      throw Error(e.category(), fmt::format("pair {}: {}", i, e.message()));
    }
    if (options.clamp_negative()) c = std::max(c, 0.0);
    raw[i] = c * sigmoid_layer_prior(static_cast<double>(teacher_layers[i]), options.midpoint(), options.slope());
    total += raw[i];
  }
  auto w = torch::tensor(raw, torch::kFloat64);
  if (options.normalize() == LayerWeightNorm::kSumToCount) {
    w = total > 0.0 ? w * (static_cast<double>(P) / total) : torch::ones({static_cast<int64_t>(P)}, torch::kFloat64);
  }
  return w.to(device);
}

}  // namespace functional

LayerSimilarityPolicyImpl::LayerSimilarityPolicyImpl(LayerSimilarityPolicyOptions options_)
    : options(std::move(options_)) {
  reset();
}

void LayerSimilarityPolicyImpl::reset() {
  const auto& o = options.similarity();
  if (!std::isfinite(o.slope()) || !std::isfinite(o.midpoint())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("LayerSimilarityPolicy: slope and midpoint must be finite, got {} and {}", o.slope(),
                            o.midpoint()));
  }
}

namespace {

// [B, L, D] features with a [B, L] mask: padded positions zeroed (they may hold NaN).
torch::Tensor zero_padding(const torch::Tensor& x, const torch::Tensor& mask) {
  if (!mask.defined() || x.dim() != 3 || mask.dim() != 2 || mask.size(0) != x.size(0) || mask.size(1) != x.size(1)) {
    return x;
  }
  return x.masked_fill((mask.to(x.device()) == 0).unsqueeze(-1), 0.0);
}

}  // namespace

WeightingResult LayerSimilarityPolicyImpl::combine(const std::vector<torch::Tensor>& losses,
                                                   const std::vector<std::string>& names,
                                                   const WeightingContext& context) {
  const size_t K = losses.size();
  if (context.batch == nullptr || context.modules.size() != K || names.size() != K) {
    throw Error(ErrorCategory::kState,
                "LayerSimilarityPolicy weighs terms by the features in the batch: use it as the policy of a "
                "kd::WeightedSum, which passes the batch and the terms' modules");
  }
  const auto& batch = *context.batch;
  for (const auto& [name, pair] : options.layers()) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      const auto best = closest_name(name, names);
      throw Error(ErrorCategory::kConfig,
                  fmt::format("LayerSimilarityPolicyOptions.layers names '{}', which is not a term of the sum; "
                              "{}the terms are: {}",
                              name, best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(names, ", ")));
    }
  }
  const auto& so = options.similarity();
  std::vector<double> raw(K, 0.0), cos(K, 0.0);
  std::vector<bool> weighed(K, false);
  for (size_t k = 0; k < K; ++k) {
    torch::NoGradGuard no_grad;  // the weights are constants; the total below keeps its graph
    std::vector<AlignedFeatures> pairs;
    const auto listed = options.layers().find(names[k]);
    if (listed != options.layers().end()) {
      const auto& hs = batch.student.hidden_states;
      const auto& ht = batch.teacher.hidden_states;
      const std::string who = fmt::format("LayerSimilarityPolicy (term '{}')", names[k]);
      const int64_t si = resolve_layer_index(listed->second.student, hs.size(), who, 0, "student", "hidden states");
      const int64_t ti = resolve_layer_index(listed->second.teacher, ht.size(), who, 0, "teacher", "hidden states");
      if (!hs[si].defined() || !ht[ti].defined() || hs[si].sizes() != ht[ti].sizes()) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("{}: student hidden state {} {} and teacher hidden state {} {} must have the same "
                                "shape for a cosine similarity; use a kd::FeatureL2 term (it projects the student) "
                                "instead of listing the term in layers",
                                who, si, hs[si].defined() ? shape_string(hs[si]) : "(undefined)", ti,
                                ht[ti].defined() ? shape_string(ht[ti]) : "(undefined)"));
      }
      pairs.push_back({zero_padding(hs[si].detach(), batch.mask), zero_padding(ht[ti].detach(), batch.mask), ti});
    } else if (auto* source = dynamic_cast<LayerFeatureSource*>(context.modules[k].get())) {
      try {
        pairs = source->aligned_features(batch);
      } catch (const Error& e) {
        throw Error(e.category(), fmt::format("LayerSimilarityPolicy (term '{}'): {}", names[k], e.message()));
      }
    }
    if (pairs.empty()) continue;  // not weighed: w_k = 1
    weighed[k] = true;
    double sum_raw = 0.0, sum_cos = 0.0;
    for (const auto& f : pairs) {
      const double c = functional::feature_cosine_similarity(f.student, f.teacher).item<double>();
      sum_cos += c;
      sum_raw += (so.clamp_negative() ? std::max(c, 0.0) : c) *
                 functional::sigmoid_layer_prior(static_cast<double>(f.teacher_layer), so.midpoint(), so.slope());
    }
    raw[k] = sum_raw / static_cast<double>(pairs.size());
    cos[k] = sum_cos / static_cast<double>(pairs.size());
  }
  const auto m = static_cast<double>(std::count(weighed.begin(), weighed.end(), true));
  if (m == 0) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("LayerSimilarityPolicy: none of the terms ({}) gives layer features; use kd::FeatureL2 "
                            "terms or list a term's hidden states in LayerSimilarityPolicyOptions::layers",
                            fmt::join(names, ", ")));
  }
  double total_raw = 0.0;
  for (size_t k = 0; k < K; ++k) total_raw += weighed[k] ? raw[k] : 0.0;
  std::vector<double> w(K, 1.0);
  for (size_t k = 0; k < K; ++k) {
    if (!weighed[k]) continue;
    if (so.normalize() == LayerWeightNorm::kNone) {
      w[k] = raw[k];
    } else {
      w[k] = total_raw > 0.0 ? m * raw[k] / total_raw : 1.0;
    }
  }
  WeightingResult r;
  r.weights = torch::tensor(w, torch::kFloat64);
  for (size_t k = 0; k < K; ++k) {
    const auto& l = losses[k];
    auto term = l.reshape({}) * w[k];
    r.total = r.total.defined() ? r.total + term : term;
    if (weighed[k]) r.parts["cos." + names[k]] = torch::scalar_tensor(cos[k], torch::kFloat64);
  }
  return r;
}

}  // namespace kd
