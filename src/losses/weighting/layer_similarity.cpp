#include "kd/losses/weighting/layer_similarity.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

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
}  // namespace kd
