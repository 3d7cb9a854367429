#include "kd/losses/feature_l2.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {
namespace {

// Channels for [B, C, H, W]; the last dimension for [B, D] and [B, L, D].
int64_t feature_dim(const torch::Tensor& t) { return t.dim() == 4 ? 1 : t.dim() - 1; }

torch::Tensor normalize_features(const torch::Tensor& x, FeatureNorm mode) {
  const int64_t d = feature_dim(x);
  switch (mode) {
    case FeatureNorm::kNone: return x;
    case FeatureNorm::kL2: return x / x.norm(2, {d}, /*keepdim=*/true).clamp_min(1e-12);
    case FeatureNorm::kStandardize: {
      const auto centered = x - x.mean({d}, /*keepdim=*/true);
      return centered / (centered.pow(2).mean({d}, /*keepdim=*/true) + 1e-5).sqrt();
    }
  }
  return x;
}

// A linear map over the feature dimension; for [B, C, H, W] that is exactly a 1×1 convolution.
torch::Tensor project(const torch::nn::Linear& proj, const torch::Tensor& x) {
  if (x.dim() == 4) {
    const auto& w = proj->weight;
    return torch::conv2d(x, w.view({w.size(0), w.size(1), 1, 1}), proj->bias);
  }
  return torch::linear(x, proj->weight, proj->bias);
}

bool all_finite(const torch::Tensor& t) { return torch::isfinite(t).all().item<bool>(); }

}  // namespace

namespace functional {

torch::Tensor feature_mse(const torch::Tensor& student, const torch::Tensor& teacher, FeatureNorm normalize,
                          const torch::Tensor& mask) {
  if (!student.defined() || !teacher.defined() || student.sizes() != teacher.sizes()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FeatureL2: student features {} and teacher features {} must have the same shape; "
                            "project the student's features to the teacher's width first",
                            shape_string(student), shape_string(teacher)));
  }
  if (student.dim() < 2 || student.dim() > 4) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FeatureL2: features {} must be [B, D], [B, L, D] or [B, C, H, W]", shape_string(student)));
  }
  const auto sq = (normalize_features(student, normalize) - normalize_features(teacher, normalize)).pow(2);
  if (!mask.defined() || student.dim() != 3) return sq.mean();
  if (mask.dim() != 2 || mask.size(0) != student.size(0) || mask.size(1) != student.size(1)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FeatureL2: mask {} does not match features {}: a mask over [B, L, D] features must be "
                            "[B, L]; pass no mask for features that are not per position",
                            shape_string(mask), shape_string(student)));
  }
  const auto m = mask.to(sq.scalar_type()).unsqueeze(-1);
  // Σ over real positions / (real positions · D): the mean over the elements that count.
  return (sq * m).sum() / (m.sum() * sq.size(-1)).clamp_min(1.0);
}

}  // namespace functional

FeatureL2Impl::FeatureL2Impl(FeatureL2Options options_) : options(std::move(options_)) { reset(); }

void FeatureL2Impl::reset() {
  projections_.clear();
  if (options.pairs().empty()) {
    throw Error(ErrorCategory::kValue, "FeatureL2Options.pairs is empty; give at least one LayerPair");
  }
  for (size_t i = 0; i < options.pairs().size(); ++i) {
    const auto& p = options.pairs()[i];
    if (!(std::isfinite(p.weight) && p.weight >= 0.0)) {
      throw Error(ErrorCategory::kValue, fmt::format("FeatureL2 pair {}: weight must be finite and >= 0, got {}", i, p.weight));
    }
    if (p.student_dim < 0 || p.teacher_dim < 0 || (p.student_dim > 0) != (p.teacher_dim > 0)) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("FeatureL2 pair {}: give both student_dim and teacher_dim (> 0) to learn a projection, "
                              "or neither (0) for same-width layers; got student_dim {} and teacher_dim {}",
                              i, p.student_dim, p.teacher_dim));
    }
    torch::nn::Linear proj{nullptr};
    if (p.student_dim != p.teacher_dim) {
      proj = register_module(fmt::format("proj{}", i), torch::nn::Linear(p.student_dim, p.teacher_dim));
      torch::NoGradGuard no_grad;
      switch (options.init()) {
        case ProjectionInit::kDefault: break;  // what torch::nn::Linear's constructor did
        case ProjectionInit::kXavier:
          torch::nn::init::xavier_uniform_(proj->weight);
          proj->bias.zero_();
          break;
        case ProjectionInit::kOrthogonal:
          torch::nn::init::orthogonal_(proj->weight);
          proj->bias.zero_();
          break;
        case ProjectionInit::kIdentity: {
          proj->weight.zero_();
          const int64_t k = std::min(p.student_dim, p.teacher_dim);
          proj->weight.slice(0, 0, k).slice(1, 0, k).copy_(torch::eye(k));
          proj->bias.zero_();
          break;
        }
      }
    }
    projections_.push_back(proj);
  }
}

LossResult FeatureL2Impl::forward(const DistillBatch& batch) {
  const auto& hs = batch.student.hidden_states;
  const auto& ht = batch.teacher.hidden_states;
  const size_t n_pairs = options.pairs().size();
  std::vector<torch::Tensor> students, teachers;
  std::vector<int64_t> teacher_layers;
  for (size_t i = 0; i < n_pairs; ++i) {
    const auto& p = options.pairs()[i];
    const int64_t si = resolve_layer_index(p.student, hs.size(), "FeatureL2", i, "student", "hidden states");
    const int64_t ti = resolve_layer_index(p.teacher, ht.size(), "FeatureL2", i, "teacher", "hidden states");
    auto s = hs[si];
    auto t = ht[ti].detach();  // the loss never trains the teacher
    for (const auto* x : {&s, &t}) {
      if (!x->defined() || x->dim() < 2 || x->dim() > 4) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("FeatureL2 pair {}: student hidden state {} is {} and teacher hidden state {} is {}; "
                                "both must be [B, D], [B, L, D] or [B, C, H, W]",
                                i, si, shape_string(s), ti, shape_string(t)));
      }
    }
    const int64_t fd = feature_dim(s);
    if (!projections_[i].is_empty()) {
      if (s.size(fd) != p.student_dim) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("FeatureL2 pair {}: student hidden state {} is {} (width {} in dim {}) but the pair's "
                                "student_dim is {}; fix student_dim or the student layer index",
                                i, si, shape_string(s), s.size(fd), fd, p.student_dim));
      }
      s = project(projections_[i], s);
    }
    if (t.dim() != s.dim()) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("FeatureL2 pair {}: student features {} and teacher features {} have different ranks; "
                              "match layers of the same kind ([B, D], [B, L, D] or [B, C, H, W])",
                              i, shape_string(s), shape_string(t)));
    }
    if (t.size(fd) != s.size(fd)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("FeatureL2 pair {}: {}student features {} and teacher features {} differ in width; {}", i,
                              !projections_[i].is_empty() ? "projected " : "", shape_string(s), shape_string(t),
                              !projections_[i].is_empty() ? fmt::format("the pair's teacher_dim is {}; fix it or the teacher "
                                                            "layer index", p.teacher_dim)
                                              : "set student_dim and teacher_dim on the pair to learn a projection"));
    }
    if (s.dim() == 4 && s.sizes().slice(2) != t.sizes().slice(2)) {
      if (options.spatial_mismatch() == SpatialMismatch::kError) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("FeatureL2 pair {}: student features {} and teacher features {} differ in spatial "
                                "size; pick layers of the same resolution or use SpatialMismatch::kAdaptivePool",
                                i, shape_string(s), shape_string(t)));
      }
      const std::vector<int64_t> hw{std::min(s.size(2), t.size(2)), std::min(s.size(3), t.size(3))};
      s = torch::adaptive_avg_pool2d(s, hw);
      t = torch::adaptive_avg_pool2d(t, hw);
    }
    if (s.sizes() != t.sizes()) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("FeatureL2 pair {}: student features {} and teacher features {} differ in batch or "
                              "sequence size; feed both models the same batch",
                              i, shape_string(s), shape_string(t)));
    }
    students.push_back(normalize_features(s, options.normalize()));
    teachers.push_back(normalize_features(t, options.normalize()));
    teacher_layers.push_back(ti);
  }

  LossResult r;
  std::vector<torch::Tensor> terms;
  for (size_t i = 0; i < n_pairs; ++i) {
    terms.push_back(functional::feature_mse(students[i], teachers[i], FeatureNorm::kNone, batch.mask));
    r.parts[fmt::format("feat.{}", i)] = terms.back().detach();
  }

  torch::Tensor w;
  if (options.pair_weighting()) {
    std::vector<torch::Tensor> s_detached;
    for (const auto& s : students) s_detached.push_back(s.detach());
    w = options.pair_weighting()(s_detached, teachers, teacher_layers);
    if (!w.defined() || w.numel() != static_cast<int64_t>(n_pairs)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("FeatureL2: pair_weighting returned {} but there are {} pairs; it must return [{}]",
                              shape_string(w), n_pairs, n_pairs));
    }
    w = w.detach().reshape({-1}).to(terms[0].options());
    if (!all_finite(w)) {
      throw Error(ErrorCategory::kValue, "FeatureL2: pair_weighting returned NaN or Inf weights");
    }
    for (size_t i = 0; i < n_pairs; ++i) r.parts[fmt::format("feat.w{}", i)] = w[i];
  }

  for (size_t i = 0; i < n_pairs; ++i) {
    auto term = options.pairs()[i].weight * terms[i];
    if (w.defined()) term = term * w[i];
    r.total = r.total.defined() ? r.total + term : term;
  }
  if (!std::isfinite(r.total.item<double>())) {
    // Only on failure: find the culprit for the message.
    for (size_t i = 0; i < n_pairs; ++i) {
      const auto& p = options.pairs()[i];
      for (const char* side : {"student", "teacher"}) {
        const bool is_student = side[0] == 's';
        const auto& list = is_student ? hs : ht;
        const int64_t idx = resolve_layer_index(is_student ? p.student : p.teacher, list.size(), "FeatureL2", i, side,
                                                "hidden states");
        if (!all_finite(list[idx])) {
          throw Error(ErrorCategory::kValue,
                      fmt::format("FeatureL2 pair {}: {} hidden state {} contains NaN or Inf", i, side, idx));
        }
      }
    }
    throw Error(ErrorCategory::kValue, "FeatureL2: the loss is not finite (check the projections' weights)");
  }
  r.parts["feat"] = r.total.detach();
  return r;
}

}  // namespace kd
