#pragma once
/// \file
/// Calibration of a classifier's confidence: expected calibration error.

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "kd/core/model.h"
#include "kd/data/tensor_dataset.h"

namespace kd {

/// Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
/// the predictions' confidences c_i = max_k softmax(z_i)_k fall into M equal-width bins
/// B_m = ((m−1)/M, m/M], and
///
///   ECE = Σ_m |B_m| / N · |acc(B_m) − conf(B_m)|,
///
/// acc the share of correct predictions in the bin and conf their mean confidence. 0 for a
/// perfectly calibrated model; mixing augmentations and soft targets are meant to lower it.
///
/// Example:
/// ```
/// kd::CalibrationMetrics cal(15);
/// cal.update(logits, targets);
/// double ece = cal.ece();
/// ```
class CalibrationMetrics {
 public:
  /// `bins` ≥ 1 (15 is the usual choice); kd::Error (kValue) otherwise.
  explicit CalibrationMetrics(int64_t bins = 15);
  /// Adds a batch: `logits` [B, C], `targets` [B] class indices.
  void update(const torch::Tensor& logits, const torch::Tensor& targets);
  int64_t count() const { return count_; }
  /// kd::Error (kValue) when nothing was added.
  double ece() const;

 private:
  int64_t count_ = 0;
  std::vector<double> confidence_sum_, correct_, size_;
};

/// Runs `model` over `dataset` in eval mode under no-grad and returns its calibration.
///
/// Example: `double ece = kd::evaluate_calibration(*net, test).ece();`
CalibrationMetrics evaluate_calibration(Model& model, const data::TensorDataset& dataset, int64_t bins = 15,
                                        int64_t batch_size = 512);

}  // namespace kd
