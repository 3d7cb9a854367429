#include "kd/losses/gradient_matching.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/temperature_kl.h"

namespace kd {
namespace {

struct Terms {
  torch::Tensor grad_mse;
  torch::Tensor kl;
};

// ‖g‖₂ over the last dimension. The clamp keeps the derivative finite (zero) where
// g is exactly zero, as it is at padded tokens whose targets are ignored.
torch::Tensor position_norm(const torch::Tensor& g) { return g.pow(2).sum(-1).clamp_min(1e-30).sqrt(); }

Terms compute_terms(const torch::Tensor& student_logits, const torch::Tensor& student_inputs,
                    const torch::Tensor& teacher_logits, const torch::Tensor& teacher_inputs,
                    const torch::Tensor& targets, const GradientMatchingOptions& options, const torch::Tensor& mask) {
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
  const auto sq = (a - b).pow(2);
  torch::Tensor grad_mse;
  if (mask.defined() && mask.dim() == 2 && sq.dim() >= 2 && sq.size(0) == mask.size(0) && sq.size(1) == mask.size(1) &&
      sq.dim() <= 3) {
    // [B, L] or [B, L, D]: average over the real positions only.
    auto m = mask.to(sq.scalar_type());
    const double per_position = sq.dim() == 3 ? static_cast<double>(sq.size(2)) : 1.0;
    if (sq.dim() == 3) m = m.unsqueeze(-1);
    grad_mse = (sq * m).sum() / (m.sum() * per_position).clamp_min(1.0);
  } else {
    grad_mse = sq.mean();
  }
  const auto kl = functional::temperature_kl(student_logits, teacher_logits.detach(),
                                             TemperatureKLOptions().temperature(options.temperature()));
  return {grad_mse, kl};
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
  const auto flat_logits = logits.reshape({-1, logits.size(-1)});
  const auto flat_targets = targets.reshape({-1}).to(torch::kLong);
  const auto keep = flat_targets != ignore_index;
  const auto log_p = torch::log_softmax(flat_logits, -1);
  const auto nll = -log_p.gather(1, flat_targets.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1);
  const auto task = (nll * keep.to(nll.scalar_type())).sum();
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
  const auto t = compute_terms(student_logits, student_inputs, teacher_logits, teacher_inputs, targets, options, mask);
  return lambda * t.grad_mse + (1.0 - lambda) * t.kl;
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
  const auto t = compute_terms(batch.student.logits, xs, batch.teacher.logits, xt, batch.targets, options, batch.mask);
  LossResult r;
  r.total = lambda * t.grad_mse + (1.0 - lambda) * t.kl;
  if (!std::isfinite(r.total.item<double>())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GradientMatching: the loss is not finite (gradient MSE {}, KL {}); check the models' "
                            "outputs and inputs for NaN or Inf",
                            t.grad_mse.item<double>(), t.kl.item<double>()));
  }
  r.parts["r1"] = r.total.detach();
  r.parts["r1.grad_mse"] = t.grad_mse.detach();
  r.parts["r1.kl"] = t.kl.detach();
  r.parts["r1.lambda"] = torch::scalar_tensor(lambda, torch::TensorOptions().dtype(r.total.scalar_type()).device(r.total.device()));
  return r;
}

}  // namespace kd
