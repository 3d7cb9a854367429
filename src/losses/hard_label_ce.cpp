#include "kd/losses/hard_label_ce.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {
namespace functional {

torch::Tensor hard_label_ce(const torch::Tensor& logits, const torch::Tensor& targets,
                            const HardLabelCEOptions& options) {
  if (!targets.defined()) {
    throw Error(ErrorCategory::kValue, "HardLabelCE needs batch.targets (class indices), got none");
  }
  if (logits.dim() < 2 || logits.sizes().slice(0, logits.dim() - 1) != targets.sizes()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("HardLabelCE: logits {} and targets {} disagree; targets must have the "
                            "logits' shape without the class dimension",
                            shape_string(logits), shape_string(targets)));
  }
  const auto flat_logits = logits.reshape({-1, logits.size(-1)});
  const auto flat_targets = targets.reshape({-1}).to(torch::kLong);
  const auto keep = flat_targets != options.ignore_index();
  const auto log_p = torch::log_softmax(flat_logits, -1);
  const auto safe_targets = flat_targets.masked_fill(~keep, 0);
  auto nll = -log_p.gather(1, safe_targets.unsqueeze(1)).squeeze(1);
  const double eps = options.label_smoothing();
  if (eps > 0) nll = (1 - eps) * nll - eps * log_p.mean(-1);
  const auto w = keep.to(nll.scalar_type());
  return (nll * w).sum() / w.sum().clamp_min(1.0);
}

}  // namespace functional

HardLabelCEImpl::HardLabelCEImpl(HardLabelCEOptions options_) : options(options_) { reset(); }

void HardLabelCEImpl::reset() {
  const double eps = options.label_smoothing();
  if (!(eps >= 0.0 && eps < 1.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("HardLabelCEOptions.label_smoothing must be in [0, 1), got {}", eps));
  }
}

LossResult HardLabelCEImpl::forward(const DistillBatch& batch) {
  LossResult r;
  r.total = functional::hard_label_ce(batch.student.logits, batch.targets, options);
  r.parts["ce"] = r.total.detach();
  return r;
}

}  // namespace kd
