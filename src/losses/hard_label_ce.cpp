#include "kd/losses/hard_label_ce.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "kd/core/error.h"

namespace kd {
namespace {

void check_smoothing(double eps) {
  if (!(eps >= 0.0 && eps < 1.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("HardLabelCEOptions.label_smoothing must be in [0, 1), got {}", eps));
  }
}

}  // namespace

namespace functional {

torch::Tensor soft_target_ce(const torch::Tensor& logits, const torch::Tensor& targets, const HardLabelCEOptions& options) {
  const int64_t C = logits.size(-1);
  auto y = targets.to(logits.device(), logits.scalar_type()).reshape({-1, C});
  const auto sums = y.sum(-1);
  if (y.numel() > 0 && (y.min().item<double>() < 0 || (sums - 1).abs().max().item<double>() > 1e-3)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("HardLabelCE: soft targets {} must be distributions over the {} classes (non-negative, "
                            "rows summing to 1)",
                            shape_string(targets), C));
  }
  const double eps = options.label_smoothing();
  if (eps > 0) y = (1 - eps) * y + eps / static_cast<double>(C);
  return -(y * torch::log_softmax(logits.reshape({-1, C}), -1)).sum(-1).mean();
}

namespace {

// The mean cross-entropy and, for integer targets, the number of targets it is over (so the loss
// reports the count this already synchronised for).
struct CountedCE {
  torch::Tensor loss;
  std::optional<int64_t> count;
};

CountedCE counted_ce(const torch::Tensor& logits, const torch::Tensor& targets, const HardLabelCEOptions& options) {
  check_smoothing(options.label_smoothing());
  if (!targets.defined()) {
    throw Error(ErrorCategory::kValue, "HardLabelCE needs batch.targets (class indices), got none");
  }
  if (!logits.defined()) {
    throw Error(ErrorCategory::kModel, "HardLabelCE: the student output has no logits; make the model return logits");
  }
  if (targets.is_floating_point() && targets.sizes() == logits.sizes()) {
    return {soft_target_ce(logits, targets, options), std::nullopt};
  }
  if (logits.dim() < 2 || logits.sizes().slice(0, logits.dim() - 1) != targets.sizes()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("HardLabelCE: logits {} and targets {} disagree; targets must have the "
                            "logits' shape without the class dimension",
                            shape_string(logits), shape_string(targets)));
  }
  if (targets.is_floating_point() || targets.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue,
                fmt::format("HardLabelCE: targets {} for logits {} must be integer class indices, got {}",
                            shape_string(targets), shape_string(logits), toString(targets.scalar_type())));
  }
  const int64_t C = logits.size(-1);
  const auto flat_logits = logits.reshape({-1, C});
  const auto flat_targets = targets.reshape({-1}).to(logits.device(), torch::kLong);
  const auto keep = flat_targets != options.ignore_index();
  int64_t n_kept = 0;
  if (flat_targets.numel() > 0) {
    // The count and the kept targets' range in one host sync.
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
    const auto stats = torch::stack({keep.sum(), flat_targets.masked_fill(~keep, kMax).min(),
                                     flat_targets.masked_fill(~keep, kMin).max()})
                           .to(torch::kCPU);
    const auto* v = stats.data_ptr<int64_t>();
    n_kept = v[0];
    const int64_t lo = v[1], hi = v[2];
    if (n_kept > 0 && (lo < 0 || hi >= C)) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("HardLabelCE: targets {} range over [{}, {}] but the logits {} have classes [0, {}]; "
                              "mark padding with ignore_index ({})",
                              shape_string(targets), lo, hi, shape_string(logits), C - 1, options.ignore_index()));
    }
  }
  // Only counted rows enter the softmax: padding logits may be non-finite, and a
  // NaN row would leak into the gradient even with a zero weight.
  auto rows = flat_logits;
  auto rows_targets = flat_targets;
  if (n_kept < flat_targets.size(0)) {
    const auto idx = keep.nonzero().squeeze(1);
    rows = flat_logits.index_select(0, idx);
    rows_targets = flat_targets.index_select(0, idx);
  }
  const auto log_p = torch::log_softmax(rows, -1);
  auto nll = -log_p.gather(1, rows_targets.unsqueeze(1)).squeeze(1);
  const double eps = options.label_smoothing();
  if (eps > 0) nll = (1 - eps) * nll - eps * log_p.mean(-1);
  return {nll.sum() / static_cast<double>(std::max<int64_t>(n_kept, 1)), n_kept};
}

}  // namespace

torch::Tensor hard_label_ce(const torch::Tensor& logits, const torch::Tensor& targets,
                            const HardLabelCEOptions& options) {
  return counted_ce(logits, targets, options).loss;
}

}  // namespace functional

HardLabelCEImpl::HardLabelCEImpl(HardLabelCEOptions options_) : options(options_) { reset(); }

void HardLabelCEImpl::reset() { check_smoothing(options.label_smoothing()); }

LossResult HardLabelCEImpl::forward(const DistillBatch& batch) {
  auto targets = batch.targets;
  if (targets.defined() && batch.mask.defined() && batch.mask.sizes() == targets.sizes()) {
    targets = targets.masked_fill(batch.mask.to(targets.device()) == 0, options.ignore_index());
  }
  LossResult r;
  const auto ce = functional::counted_ce(batch.student.logits, targets, options);
  r.total = ce.loss;
  r.parts["ce"] = r.total.detach();
  if (ce.count) r.count = static_cast<double>(*ce.count);
  return r;
}

}  // namespace kd
