#include "kd/losses/gradient_matching.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/temperature_kl.h"

namespace kd {
namespace {

struct Terms {
  torch::Tensor grad;  // the distance of the input gradients (MSE or cosine)
  torch::Tensor kl;
  torch::Tensor total;  // λ·grad + (1−λ)·kl
};

// ‖g‖₂ over the last dimension. The clamp keeps the derivative finite (zero) where
// g is exactly zero, as it is at padded tokens whose targets are ignored.
torch::Tensor position_norm(const torch::Tensor& g) { return g.pow(2).sum(-1).clamp_min(1e-30).sqrt(); }

// The targets the task loss and the KL count: `mask` zeros (when it has the targets' shape)
// become ignore_index, as in HardLabelCE, so a padded position is left out everywhere.
torch::Tensor masked_targets(const torch::Tensor& targets, const torch::Tensor& mask, int64_t ignore_index) {
  if (!targets.defined() || !mask.defined() || mask.sizes() != targets.sizes() || targets.is_floating_point()) {
    return targets;
  }
  return targets.masked_fill(mask.to(targets.device()) == 0, ignore_index);
}

Terms compute_terms(const torch::Tensor& student_logits, const torch::Tensor& student_inputs,
                    const torch::Tensor& teacher_logits, const torch::Tensor& teacher_inputs,
                    const torch::Tensor& raw_targets, const GradientMatchingOptions& options, const torch::Tensor& mask,
                    double lambda) {
  if (!(options.temperature() > 0.0) || !std::isfinite(options.temperature())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GradientMatchingOptions.temperature must be a finite number > 0, got {}",
                            options.temperature()));
  }
  const auto targets = masked_targets(raw_targets, mask, options.ignore_index());
  const auto g_s = functional::task_input_gradient(student_logits, student_inputs, targets, /*create_graph=*/true,
                                                   options.ignore_index());
  const auto g_t = functional::task_input_gradient(teacher_logits, teacher_inputs, targets, /*create_graph=*/false,
                                                   options.ignore_index())
                       .detach();
  GradientSpace space = options.space();
  if (space == GradientSpace::kAuto) space = g_s.sizes() == g_t.sizes() ? GradientSpace::kRaw : GradientSpace::kPositionNorm;
  torch::Tensor a = g_s, b = g_t;
  if (space == GradientSpace::kRaw) {
    if (g_s.sizes() != g_t.sizes()) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("GradientMatching: the student's input gradient {} and the teacher's {} differ in shape; "
                              "use GradientSpace::kPositionNorm for embeddings of different widths, or give both "
                              "models the same inputs",
                              shape_string(g_s), shape_string(g_t)));
    }
  } else {
    if (g_s.dim() < 2 || g_s.dim() != g_t.dim() || g_s.sizes().slice(0, g_s.dim() - 1) != g_t.sizes().slice(0, g_t.dim() - 1)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("GradientMatching: per-position gradient norms need inputs that differ only in the last "
                              "(width) dimension, but the student's input gradient is {} and the teacher's {}",
                              shape_string(g_s), shape_string(g_t)));
    }
    a = position_norm(g_s);
    b = position_norm(g_t);
  }
  torch::Tensor grad;  // D(φ(g_s), φ(g_t))
  // [B, L] or [B, L, D] with a [B, L] mask: only the real positions count.
  const bool masked = mask.defined() && mask.dim() == 2 && a.dim() >= 2 && a.dim() <= 3 && a.size(0) == mask.size(0) &&
                      a.size(1) == mask.size(1);
  if (options.distance() == GradientDistance::kCosine) {
    // Per example over its counted positions, padded ones zeroed in both (masked_fill, not a product: a padded
    // position's gradient may be non-finite, and 0·NaN would leak into value and gradient).
    auto sa = a, sb = b;
    if (masked) {
      auto drop = mask.to(a.device()) == 0;
      if (a.dim() == 3) drop = drop.unsqueeze(-1);
      sa = a.masked_fill(drop, 0.0);
      sb = b.masked_fill(drop, 0.0);
    }
    const auto fa = sa.flatten(1), fb = sb.flatten(1);
    const auto norms = (fa.pow(2).sum(1) * fb.pow(2).sum(1)).sqrt().clamp_min(1e-12);
    grad = (1.0 - (fa * fb).sum(1) / norms).mean();
  } else if (masked) {
    const auto diff = a - b;
    auto keep = mask.to(diff.device()) != 0;
    const double per_position = diff.dim() == 3 ? static_cast<double>(diff.size(2)) : 1.0;
    const auto count = keep.sum().to(diff.scalar_type()) * per_position;
    if (diff.dim() == 3) keep = keep.unsqueeze(-1);
    grad = diff.masked_fill(~keep, 0.0).pow(2).sum() / count.clamp_min(1.0);
  } else {
    grad = (a - b).pow(2).mean();
  }
  // The KL counts what the task loss counts: real positions with a real target (the same rule
  // as TemperatureKL's module form).
  torch::Tensor kl;
  try {
    const auto rows = functional::kl_counted_rows(student_logits, mask, targets, options.ignore_index());
    kl = functional::temperature_kl(student_logits, teacher_logits.detach(), rows,
                                    TemperatureKLOptions().temperature(options.temperature()));
  } catch (const Error& e) {
    throw Error(e.category(), fmt::format("GradientMatching (KL part): {}", e.message()));
  }
  return Terms{grad, kl, lambda * grad + (1.0 - lambda) * kl};
}

void check_lambda(double lambda) {
  if (!(lambda >= 0.0 && lambda <= 1.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("GradientMatching: λ must be in [0, 1], got {}", lambda));
  }
}

}  // namespace

namespace functional {

torch::Tensor task_input_gradient(const torch::Tensor& logits, const torch::Tensor& inputs,
                                  const torch::Tensor& targets, bool create_graph, int64_t ignore_index) {
  if (!inputs.defined() || !inputs.requires_grad()) {
    throw Error(ErrorCategory::kState,
                fmt::format("GradientMatching: the inputs {} do not require grad; make them require grad before the "
                            "forward pass (inputs.requires_grad_(true)) — a trainer does this when the loss reports "
                            "needs_input_grad()",
                            shape_string(inputs)));
  }
  if (!logits.defined() || !logits.requires_grad()) {
    throw Error(ErrorCategory::kState,
                "GradientMatching: the logits carry no autograd graph; compute them from the inputs with grad mode "
                "on (for the teacher: Teacher::forward_with_input_grad, not forward)");
  }
  if (!targets.defined()) {
    throw Error(ErrorCategory::kValue, "GradientMatching needs batch.targets (class indices) for the task loss, got none");
  }
  if (logits.dim() < 2 || logits.sizes().slice(0, logits.dim() - 1) != targets.sizes()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("GradientMatching: logits {} and targets {} disagree; targets must have the logits' shape "
                            "without the class dimension",
                            shape_string(logits), shape_string(targets)));
  }
  if (targets.is_floating_point() || targets.is_complex() || targets.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GradientMatching: targets {} must be integer class indices for the task loss, got {}",
                            shape_string(targets), toString(targets.scalar_type())));
  }
  const int64_t C = logits.size(-1);
  const auto flat_logits = logits.reshape({-1, C});
  const auto flat_targets = targets.reshape({-1}).to(logits.device(), torch::kLong);
  const auto keep = flat_targets != ignore_index;
  if (keep.any().item<bool>()) {
    const auto kept = flat_targets.masked_select(keep);
    const int64_t lo = kept.min().item<int64_t>(), hi = kept.max().item<int64_t>();
    if (lo < 0 || hi >= C) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("GradientMatching: targets {} range over [{}, {}] but the logits {} have classes [0, {}]; "
                              "mark padding with ignore_index ({})",
                              shape_string(targets), lo, hi, shape_string(logits), C - 1, ignore_index));
    }
  }
  // Only counted rows enter the softmax: a padded row may hold NaN, and with a zero weight
  // instead its 0·NaN would reach the loss and (through log_softmax's backward) the gradient.
  const auto idx = keep.nonzero().squeeze(1);
  const auto log_p = torch::log_softmax(flat_logits.index_select(0, idx), -1);
  const auto task = -log_p.gather(1, flat_targets.index_select(0, idx).unsqueeze(1)).sum();
  // retain_graph: the model's graph stays usable (the student's for the final backward;
  // the teacher's so the same batch can be evaluated again).
  auto grads = torch::autograd::grad({task}, {inputs}, /*grad_outputs=*/{}, /*retain_graph=*/true, create_graph,
                                     /*allow_unused=*/true);
  if (!grads[0].defined()) {
    throw Error(ErrorCategory::kState,
                fmt::format("GradientMatching: the logits {} were not computed from the inputs {} (no path in the "
                            "autograd graph); pass the tensor the model was run on",
                            shape_string(logits), shape_string(inputs)));
  }
  return grads[0];
}

torch::Tensor gradient_matching(const torch::Tensor& student_logits, const torch::Tensor& student_inputs,
                                const torch::Tensor& teacher_logits, const torch::Tensor& teacher_inputs,
                                const torch::Tensor& targets, double lambda, const GradientMatchingOptions& options,
                                const torch::Tensor& mask) {
  check_lambda(lambda);
  return compute_terms(student_logits, student_inputs, teacher_logits, teacher_inputs, targets, options, mask, lambda)
      .total;
}

}  // namespace functional

GradientMatchingImpl::GradientMatchingImpl(GradientMatchingOptions options_) : options(std::move(options_)) { reset(); }

void GradientMatchingImpl::reset() {
  if (!(options.temperature() > 0.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GradientMatchingOptions.temperature must be > 0, got {}", options.temperature()));
  }
  for (double p : {0.0, 0.5, 1.0}) {
    const double v = options.lambda()(p);
    if (!(v >= 0.0 && v <= 1.0)) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("GradientMatchingOptions.lambda {} leaves [0, 1] (λ = {} at progress {})",
                              options.lambda().describe(), v, p));
    }
  }
}

LossResult GradientMatchingImpl::forward(const DistillBatch& batch) {
  torch::Tensor xs = batch.inputs, xt = batch.teacher_inputs;
  const std::string& key = options.input_key();
  if (!key.empty()) {
    for (const auto* side : {&batch.student, &batch.teacher}) {
      const auto it = side->extras.find(key);
      if (it == side->extras.end() || !it->second.defined()) {
        throw Error(ErrorCategory::kModel,
                    fmt::format("GradientMatching: the {} output has no extras[\"{}\"]; the model must put its input "
                                "embeddings there (or set input_key to \"\" to use the raw inputs)",
                                side == &batch.student ? "student" : "teacher", key));
      }
      (side == &batch.student ? xs : xt) = it->second;
    }
  } else if (!xt.defined()) {
    throw Error(ErrorCategory::kState,
                "GradientMatching needs batch.teacher_inputs: a separate leaf that requires grad, from which "
                "batch.teacher was computed with Teacher::forward_with_input_grad");
  }
  const double lambda = options.lambda()(batch.step.progress);
  check_lambda(lambda);
  const auto t =
      compute_terms(batch.student.logits, xs, batch.teacher.logits, xt, batch.targets, options, batch.mask, lambda);
  LossResult r;
  r.total = t.total;
  r.parts["r1"] = r.total.detach();
  const bool cosine = options.distance() == GradientDistance::kCosine;
  r.parts[cosine ? "r1.grad_cosine" : "r1.grad_mse"] = t.grad.detach();
  const auto grad_part = (lambda * t.grad).detach();
  r.parts["r1.grad_share"] = grad_part / (grad_part + ((1.0 - lambda) * t.kl).detach()).clamp_min(1e-30);
  r.parts["r1.kl"] = t.kl.detach();
  r.parts["r1.lambda"] = torch::scalar_tensor(lambda, torch::TensorOptions().dtype(r.total.scalar_type()).device(r.total.device()));
  return r;
}

}  // namespace kd
