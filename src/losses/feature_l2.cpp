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


// [B, L, 1] bool, true at padded positions, for [B, L, D] features and a [B, L] mask;
// undefined when nothing is masked (no mask, or features that are not per position).
torch::Tensor padding_of(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& mask) {
  if (!mask.defined() || student.dim() != 3) return {};
  if (mask.dim() != 2 || mask.size(0) != student.size(0) || mask.size(1) != student.size(1)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FeatureL2: mask {} does not match student features {} and teacher features {}: a mask "
                            "over [B, L, D] features must be [B, L]; pass no mask for features that are not per "
                            "position",
                            shape_string(mask), shape_string(student), shape_string(teacher)));
  }
  return (mask.to(student.device()) == 0).unsqueeze(-1);
}

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
                fmt::format("FeatureL2: student features {} and teacher features {} must be [B, D], [B, L, D] or "
                            "[B, C, H, W]",
                            shape_string(student), shape_string(teacher)));
  }
  const auto pad = padding_of(student, teacher, mask);
  if (!pad.defined()) {
    return (normalize_features(student, normalize) - normalize_features(teacher, normalize)).pow(2).mean();
  }
  // Zero the padded positions before any arithmetic: they may hold NaN or Inf, and 0·NaN
  // would leak into the value and the gradient.
  const auto s = normalize_features(student.masked_fill(pad, 0.0), normalize).masked_fill(pad, 0.0);
  const auto t = normalize_features(teacher.masked_fill(pad, 0.0), normalize).masked_fill(pad, 0.0);
  const auto real = (~pad).sum().to(s.scalar_type());
  // Σ over real positions / (real positions · D): the mean over the elements that count.
  return (s - t).pow(2).sum() / (real * static_cast<double>(s.size(-1))).clamp_min(1.0);
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

FeatureL2Impl::Aligned FeatureL2Impl::align(const DistillBatch& batch) {
  const auto& hs = batch.student.hidden_states;
  const auto& ht = batch.teacher.hidden_states;
  const size_t n_pairs = options.pairs().size();
  Aligned out;
  for (size_t i = 0; i < n_pairs; ++i) {
    const auto& p = options.pairs()[i];
    const int64_t skipped = skipped_layers(batch.student);
    const auto ran =
        resolve_student_layer(p.student, hs.size(), skipped, "FeatureL2", i, "hidden states", said_skipped_);
    const int64_t ti = resolve_layer_index(p.teacher, ht.size(), "FeatureL2", i, "teacher", "hidden states");
    if (!ran) continue;
    const int64_t si = *ran;
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
                                "student_dim is {} (teacher hidden state {} is {}); fix student_dim or the student "
                                "layer index",
                                i, si, shape_string(s), s.size(fd), fd, p.student_dim, ti, shape_string(t)));
      }
    }
    // Padded positions are zeroed before the projection: they may hold NaN or Inf.
    torch::Tensor pad;
    if (s.dim() == 3 && t.dim() == 3 && batch.mask.defined()) {
      if (s.sizes().slice(0, 2) != t.sizes().slice(0, 2)) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("FeatureL2 pair {}: student features {} and teacher features {} differ in batch or "
                                "sequence size; feed both models the same batch",
                                i, shape_string(s), shape_string(t)));
      }
      pad = padding_of(s, t, batch.mask);
      s = s.masked_fill(pad, 0.0);
      t = t.masked_fill(pad, 0.0);
    }
    if (!projections_[i].is_empty()) s = project(projections_[i], s);
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
    s = normalize_features(s, options.normalize());
    t = normalize_features(t, options.normalize());
    if (pad.defined()) {  // the projection's bias and the normalisation leave padding non-zero
      s = s.masked_fill(pad, 0.0);
      t = t.masked_fill(pad, 0.0);
    }
    out.students.push_back(s);
    out.teachers.push_back(t);
    out.teacher_layers.push_back(ti);
    out.student_layers.push_back(si);
    out.padding.push_back(pad);
    out.pairs.push_back(i);
  }
  return out;
}

std::vector<AlignedFeatures> FeatureL2Impl::aligned_features(const DistillBatch& batch) {
  torch::NoGradGuard no_grad;
  const auto a = align(batch);
  std::vector<AlignedFeatures> out;
  for (size_t i = 0; i < a.students.size(); ++i) {
    out.push_back({a.students[i].detach(), a.teachers[i].detach(), a.teacher_layers[i]});
  }
  return out;
}

LossResult FeatureL2Impl::forward(const DistillBatch& batch) {
  const auto a = align(batch);
  const size_t n = a.pairs.size();  // fewer than the pairs when a shallower student skipped some

  LossResult r;
  std::vector<torch::Tensor> terms;
  for (size_t k = 0; k < n; ++k) {
    // Padding is already zero on both sides; the mask still sets the mean's denominator.
    terms.push_back(functional::feature_mse(a.students[k], a.teachers[k], FeatureNorm::kNone,
                                            a.padding[k].defined() ? batch.mask : torch::Tensor()));
    r.parts[fmt::format("feat.{}", a.pairs[k])] = terms.back().detach();
  }

  torch::Tensor w;
  if (options.pair_weighting() && n > 0) {
    std::vector<torch::Tensor> s_detached;
    for (const auto& s : a.students) s_detached.push_back(s.detach());
    w = options.pair_weighting()(s_detached, a.teachers, a.teacher_layers);
    if (!w.defined() || w.numel() != static_cast<int64_t>(n)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("FeatureL2: pair_weighting returned {} but there are {} pairs; it must return [{}]",
                              shape_string(w), n, n));
    }
    w = w.detach().reshape({-1}).to(terms[0].options());
    for (size_t k = 0; k < n; ++k) r.parts[fmt::format("feat.w{}", a.pairs[k])] = w[k];
  }

  for (size_t k = 0; k < n; ++k) {
    auto term = options.pairs()[a.pairs[k]].weight * terms[k];
    if (w.defined()) term = term * w[k];
    r.total = r.total.defined() ? r.total + term : term;
  }
  if (!r.total.defined()) {
    // No pair ran: a zero that still reaches the student's parameters, so that backward() works.
    const auto& hs = batch.student.hidden_states;
    r.total = hs.empty() ? torch::zeros({}) : hs.front().sum() * 0.0;
  }
  r.parts["feat"] = r.total.detach();
  return r;
}

}  // namespace kd
