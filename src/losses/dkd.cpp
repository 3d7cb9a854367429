#include "kd/losses/dkd.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "kd/core/error.h"
#include "kd/losses/temperature_kl.h"

namespace kd {
namespace {

using torch::Tensor;

void check_options(const DKDOptions& o) {
  if (!(o.alpha() >= 0) || !(o.beta() >= 0) || !(o.temperature() > 0) || !(o.warmup() >= 0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("DKDOptions: alpha {} and beta {} must be >= 0, temperature {} > 0, warmup {} >= 0",
                            o.alpha(), o.beta(), o.temperature(), o.warmup()));
  }
}

// Σ over the last dimension of p·(log p − log q), given log p and log q; p = 0 adds 0.
Tensor kl_rows(const Tensor& log_p, const Tensor& log_q) { return (log_p.exp() * (log_p - log_q)).sum(-1); }

struct Split {
  Tensor binary;       // [n, 2]: log p_g, log(1 − p_g)
  Tensor non_target;   // [n, C − 1]: log p̂ over the other classes
};

// The log-space pieces of one model's softened logits x = z / T at target classes g.
Split split(const Tensor& x, const Tensor& target_mask) {
  const int64_t n = x.size(0), C = x.size(1);
  const auto others = x.masked_select(target_mask.logical_not()).view({n, C - 1});
  const auto lse_all = torch::logsumexp(x, {-1}, /*keepdim=*/true);
  const auto lse_others = torch::logsumexp(others, {-1}, /*keepdim=*/true);
  const auto target = x.masked_select(target_mask).view({n, 1});
  return {torch::cat({target - lse_all, lse_others - lse_all}, -1), others - lse_others};
}

// The two terms under `options`: of the z-scored logits when it says standardize.
functional::DKDTerms options_terms(const Tensor& zs, const Tensor& zt, const Tensor& targets, const Tensor& rows,
                                   const DKDOptions& options) {
  const bool z = options.standardize();
  return functional::dkd_terms(z ? functional::standardize_logits(zs) : zs, z ? functional::standardize_logits(zt) : zt,
                               targets, rows, options.temperature());
}

}  // namespace

namespace functional {

DKDTerms dkd_terms(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                   const torch::Tensor& targets, const torch::Tensor& row_mask, double temperature) {
  if (!(temperature > 0)) throw Error(ErrorCategory::kValue, fmt::format("DKD: temperature must be > 0, got {}", temperature));
  if (!student_logits.defined() || !teacher_logits.defined() || student_logits.sizes() != teacher_logits.sizes() ||
      student_logits.dim() < 2) {
    throw Error(ErrorCategory::kShape,
                fmt::format("DKD: student logits {} and teacher logits {} must have one shape [..., C]; feed both "
                            "models the same batch",
                            student_logits.defined() ? shape_string(student_logits) : "(undefined)",
                            teacher_logits.defined() ? shape_string(teacher_logits) : "(undefined)"));
  }
  const int64_t C = student_logits.size(-1);
  if (C < 2) throw Error(ErrorCategory::kValue, fmt::format("DKD needs at least two classes, got logits {}", shape_string(student_logits)));
  const auto lead = student_logits.sizes().slice(0, student_logits.dim() - 1);
  if (!targets.defined() || targets.sizes() != lead) {
    throw Error(ErrorCategory::kShape,
                fmt::format("DKD: targets {} must have the logits' shape {} without the class dimension (DKD splits "
                            "off each row's target class, so it needs batch.targets)",
                            targets.defined() ? shape_string(targets) : "(undefined)", shape_string(student_logits)));
  }
  if (targets.is_floating_point() || targets.is_complex() || targets.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue,
                fmt::format("DKD: targets must be integer class indices, got {} (soft targets of mixing "
                            "augmentations have no single target class)",
                            toString(targets.scalar_type())));
  }
  const auto device = student_logits.device();
  auto rows = row_mask.defined() ? (row_mask.to(device) != 0).reshape({-1}) : torch::ones({targets.numel()}, torch::TensorOptions().dtype(torch::kBool).device(device));
  const auto g = targets.to(device, torch::kLong).reshape({-1}).masked_select(rows);
  const auto dt = (student_logits.scalar_type() == torch::kHalf || student_logits.scalar_type() == torch::kBFloat16)
                      ? torch::kFloat
                      : student_logits.scalar_type();
  const auto zero = torch::zeros({}, student_logits.options().dtype(dt));
  const int64_t n = g.numel();
  if (n == 0) return {zero + 0 * student_logits.sum(), zero.clone()};
  if (g.min().item<int64_t>() < 0 || g.max().item<int64_t>() >= C) {
    throw Error(ErrorCategory::kValue, fmt::format("DKD: targets range over [{}, {}] but the logits {} have classes "
                                                   "[0, {}]",
                                                   g.min().item<int64_t>(), g.max().item<int64_t>(),
                                                   shape_string(student_logits), C - 1));
  }
  const auto keep = rows.nonzero().squeeze(1);
  const auto xs = student_logits.reshape({-1, C}).index_select(0, keep).to(dt) / temperature;
  const auto xt = teacher_logits.reshape({-1, C}).index_select(0, keep).to(device, dt) / temperature;
  const auto target_mask = torch::zeros({n, C}, torch::TensorOptions().dtype(torch::kBool).device(device))
                               .scatter_(1, g.unsqueeze(1), true);
  const auto s = split(xs, target_mask), t = split(xt, target_mask);
  const double scale = temperature * temperature / static_cast<double>(n);
  return {kl_rows(t.binary, s.binary).sum() * scale, kl_rows(t.non_target, s.non_target).sum() * scale};
}

torch::Tensor dkd(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, const torch::Tensor& targets,
                  const torch::Tensor& row_mask, const DKDOptions& options) {
  check_options(options);
  const auto terms = options_terms(student_logits, teacher_logits, targets, row_mask, options);
  return options.alpha() * terms.tckd + options.beta() * terms.nckd;
}

}  // namespace functional

DKDImpl::DKDImpl(DKDOptions options_) : options(std::move(options_)) { reset(); }

void DKDImpl::reset() { check_options(options); }

double DKDImpl::ramp(const StepInfo& step) const {
  const double w = options.warmup();
  if (w <= 0) return 1.0;
  const double r = w <= 1 ? step.progress / w : static_cast<double>(step.stage_step) / w;
  return std::clamp(r, 0.0, 1.0);
}

LossResult DKDImpl::forward(const DistillBatch& batch) {
  const auto& zs = batch.student.logits;
  const auto& zt = batch.teacher.logits;
  if (!zs.defined()) throw Error(ErrorCategory::kModel, "DKD: the student output has no logits; make the model return logits");
  if (!zt.defined()) {
    throw Error(ErrorCategory::kModel,
                "DKD needs the teacher's full logits, but the teacher output has none (a top-k teacher cache keeps "
                "too few classes to split off the target): run the teacher online or build the cache with top_k 0");
  }
  const auto rows = functional::kl_counted_rows(zs, batch.mask, batch.targets, options.ignore_index());
  const auto terms = options_terms(zs, zt, batch.targets, rows, options);
  const double r = ramp(batch.step);
  LossResult out;
  const auto tckd = terms.tckd * (options.alpha() * r), nckd = terms.nckd * (options.beta() * r);
  out.total = tckd + nckd;
  out.parts["tckd"] = tckd.detach();
  out.parts["nckd"] = nckd.detach();
  out.parts["dkd.ramp"] = torch::scalar_tensor(r, torch::TensorOptions().dtype(out.total.scalar_type()));
  return out;
}

}  // namespace kd
