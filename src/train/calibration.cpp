#include "kd/train/calibration.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "eval_batches.h"
#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd {

CalibrationMetrics::CalibrationMetrics(int64_t bins)
    : confidence_sum_(static_cast<size_t>(std::max<int64_t>(bins, 0))),
      correct_(confidence_sum_.size()),
      size_(confidence_sum_.size()) {
  if (bins < 1) throw Error(ErrorCategory::kValue, fmt::format("CalibrationMetrics needs >= 1 bin, got {}", bins));
}

void CalibrationMetrics::update(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (logits.dim() != 2 || targets.dim() != 1 || logits.size(0) != targets.size(0)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("CalibrationMetrics: logits {} and targets {} must be [B, C] and [B]", shape_string(logits),
                            shape_string(targets)));
  }
  const auto probs = torch::softmax(logits.detach().to(torch::kCPU, torch::kDouble), -1);
  const auto [confidence, prediction] = probs.max(-1);
  const auto right = prediction.eq(targets.to(torch::kCPU).to(torch::kLong));
  const auto c = confidence.contiguous();
  const auto* conf = c.data_ptr<double>();
  const auto r = right.contiguous();
  const auto* ok = r.data_ptr<bool>();
  const auto bins = static_cast<int64_t>(size_.size());
  for (int64_t i = 0; i < c.numel(); ++i) {
    // Bin m covers ((m−1)/M, m/M]: ceil(c·M) − 1, confidence 0 (impossible for a softmax) in the first.
    const auto m = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(conf[i] * static_cast<double>(bins))) - 1, 0, bins - 1);
    confidence_sum_[m] += conf[i];
    correct_[m] += ok[i] ? 1.0 : 0.0;
    size_[m] += 1.0;
  }
  count_ += c.numel();
}

double CalibrationMetrics::ece() const {
  if (count_ == 0) throw Error(ErrorCategory::kValue, "CalibrationMetrics: no predictions were added");
  double e = 0;
  for (size_t m = 0; m < size_.size(); ++m) {
    if (size_[m] > 0) e += std::abs(correct_[m] - confidence_sum_[m]);  // |B|·|acc − conf|
  }
  return e / static_cast<double>(count_);
}

CalibrationMetrics evaluate_calibration(Model& model, const data::TensorDataset& dataset, int64_t bins,
                                        int64_t batch_size) {
  CalibrationMetrics metrics(bins);
  detail::for_each_batch(model, dataset, batch_size, [&](int64_t start, int64_t end, const torch::Tensor& logits) {
    metrics.update(logits, dataset.targets.slice(0, start, end));
  });
  return metrics;
}

}  // namespace kd
