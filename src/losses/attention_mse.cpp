#include "kd/losses/attention_mse.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {
namespace functional {

torch::Tensor attention_mse(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& mask,
                            const AttentionMSEOptions& options) {
  const bool shapes_ok = student.defined() && teacher.defined() && student.dim() == 4 && teacher.dim() == 4 &&
                         student.size(2) == student.size(3) && student.size(0) == teacher.size(0) &&
                         student.size(2) == teacher.size(2) && student.size(3) == teacher.size(3);
  if (!shapes_ok) {
    throw Error(ErrorCategory::kShape,
                fmt::format("AttentionMSE: student attention {} and teacher attention {} must both be [B, H, L, L] "
                            "with the same B and L; match layers of the same sequence length",
                            shape_string(student), shape_string(teacher)));
  }
  const int64_t B = student.size(0), L = student.size(2), hs = student.size(1), ht = teacher.size(1);
  if (options.heads() == HeadMapping::kGrouped && ht % hs != 0) {
    throw Error(ErrorCategory::kShape,
                fmt::format("AttentionMSE: grouped head mapping needs the teacher's head count to be a multiple of "
                            "the student's, but student attention {} has {} heads and teacher attention {} has {}; "
                            "use HeadMapping::kMean",
                            shape_string(student), hs, shape_string(teacher), ht));
  }

  auto s = student, t = teacher;
  torch::Tensor valid;  // [B, 1, L, L] or [B, 1, 1, 1], bool
  if (mask.defined()) {
    const auto m = mask.to(torch::kBool);
    if (mask.dim() == 2 && mask.size(0) == B && mask.size(1) == L) {
      valid = (m.unsqueeze(2) & m.unsqueeze(1)).unsqueeze(1);
    } else if (mask.dim() == 1 && mask.size(0) == B) {
      valid = m.view({B, 1, 1, 1});
    } else {
      throw Error(ErrorCategory::kShape,
                  fmt::format("AttentionMSE: mask {} must be [B, L] (or [B]) for student attention {} and teacher "
                              "attention {}",
                              shape_string(mask), shape_string(student), shape_string(teacher)));
    }
    // Zero what does not count *before* any arithmetic: padded rows may hold NaN
    // (softmax over all-masked keys), and 0·NaN would leak into value and gradient.
    s = s.masked_fill(~valid, 0.0);
    t = t.masked_fill(~valid, 0.0);
  }

  if (options.heads() == HeadMapping::kMean) {
    s = s.mean(1, /*keepdim=*/true);
    t = t.mean(1, /*keepdim=*/true);
  } else if (hs != ht) {
    t = t.reshape({B, hs, ht / hs, L, L}).mean(2);
  }
  if (options.log_space()) {
    s = s.clamp_min(options.eps()).log();
    t = t.clamp_min(options.eps()).log();
  }
  const auto sq = (s - t).pow(2);
  const int64_t heads = sq.size(1);
  const bool rows = options.reduction() == AttentionReduction::kRowSum;
  if (!valid.defined()) return rows ? sq.sum(-1).mean() : sq.mean();
  const auto v = valid.to(sq.scalar_type()).expand({B, 1, L, L});
  // Mean over counted elements, Σ v·d² / (H · Σ_{b,q,k} v), or over counted query rows.
  const auto count = (rows ? std::get<0>(v.max(-1)).sum() : v.sum()) * static_cast<double>(heads);
  return (sq * v).sum() / count.clamp_min(1.0);
}

}  // namespace functional

AttentionMSEImpl::AttentionMSEImpl(AttentionMSEOptions options_) : options(std::move(options_)) { reset(); }

void AttentionMSEImpl::reset() {
  if (options.pairs().empty()) {
    throw Error(ErrorCategory::kValue, "AttentionMSEOptions.pairs is empty; give at least one LayerPair");
  }
  for (size_t i = 0; i < options.pairs().size(); ++i) {
    const double w = options.pairs()[i].weight;
    if (!(std::isfinite(w) && w >= 0.0)) {
      throw Error(ErrorCategory::kValue, fmt::format("AttentionMSE pair {}: weight must be finite and >= 0, got {}", i, w));
    }
  }
  if (!(options.eps() > 0.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("AttentionMSEOptions.eps must be > 0, got {}", options.eps()));
  }
}

LossResult AttentionMSEImpl::forward(const DistillBatch& batch) {
  const auto& as = batch.student.attentions;
  const auto& at = batch.teacher.attentions;
  LossResult r;
  for (size_t i = 0; i < options.pairs().size(); ++i) {
    const auto& p = options.pairs()[i];
    const int64_t skipped = skipped_layers(batch.student);
    const auto si =
        resolve_student_layer(p.student, as.size(), skipped, "AttentionMSE", i, "attention maps", said_skipped_);
    const int64_t ti = resolve_layer_index(p.teacher, at.size(), "AttentionMSE", i, "teacher", "attention maps");
    if (!si) continue;
    const auto term = functional::attention_mse(as[*si], at[ti].detach(), batch.mask, options);
    r.parts[fmt::format("attn.{}", i)] = term.detach();
    r.total = r.total.defined() ? r.total + p.weight * term : p.weight * term;
  }
  if (!r.total.defined()) {
    // No pair ran: a zero that still reaches the student's parameters, so that backward() works.
    r.total = as.empty() ? torch::zeros({}) : as.front().sum() * 0.0;
  }
  r.parts["attn"] = r.total.detach();
  return r;
}

}  // namespace kd
