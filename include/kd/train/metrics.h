#pragma once
/// \file
/// Evaluation metrics for classifiers and language models.

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "kd/core/model.h"
#include "kd/data/tensor_dataset.h"

namespace kd {

class CalibrationMetrics;

/// Accumulates a confusion matrix over batches and derives the usual scores.
///
///   accuracy   = Σ_c TP_c / N
///   F1_c       = 2·TP_c / (2·TP_c + FP_c + FN_c)   (0 when the class never occurs nor is predicted)
///   macro-F1   = mean_c F1_c
///
/// Example:
/// ```
/// kd::ClassificationMetrics m(10);
/// m.update(logits, targets);
/// double f1 = m.macro_f1();
/// ```
class ClassificationMetrics {
 public:
  explicit ClassificationMetrics(int64_t num_classes);
  /// From a confusion matrix (int64 [C, C], true class × prediction), e.g. one summed over ranks.
  static ClassificationMetrics from_confusion(const torch::Tensor& confusion);

  /// Adds a batch: `logits` [B, C] (argmax is the prediction) and `targets` [B].
  void update(const torch::Tensor& logits, const torch::Tensor& targets);
  /// Adds predicted and true class indices directly.
  void update_predictions(const torch::Tensor& predictions, const torch::Tensor& targets);

  int64_t count() const;
  double accuracy() const;
  double macro_f1() const;
  std::vector<double> per_class_f1() const;
  std::vector<double> per_class_recall() const;
  /// confusion()[t][p]: examples of true class t predicted as p.
  const torch::Tensor& confusion() const { return confusion_; }

 private:
  int64_t num_classes_;
  torch::Tensor confusion_;  // int64 [C, C]
};

/// Runs `model` over `dataset` in eval mode under no-grad (its training flag
/// is restored afterwards) and returns the confusion-matrix metrics. With
/// `calibration`, the same logits are also added to it (one pass for both).
///
/// Example: `double acc = kd::evaluate_classifier(*net, test, 10).accuracy();`
ClassificationMetrics evaluate_classifier(Model& model, const data::TensorDataset& dataset, int64_t num_classes,
                                          int64_t batch_size = 512, CalibrationMetrics* calibration = nullptr);

/// What a language model scored over a dataset of next-token targets.
///
///   nll            = Σ_t −log p(y_t | y_<t) / T     (natural log, T scored tokens)
///   perplexity     = exp(nll)
///   bits_per_byte  = Σ_t −log p(y_t | y_<t) / (T · ln 2)   (one byte per token, as in byte-level models)
///   token_accuracy = #{t : argmax p(· | y_<t) = y_t} / T
struct LanguageModelMetrics {
  int64_t tokens = 0;
  double nll_sum = 0.0;
  double token_correct = 0.0;
  double nll() const;
  double perplexity() const;
  double bits_per_byte() const;
  double token_accuracy() const;
};

/// Runs `model` (logits [B, L, V]) over `dataset` (targets [N, L]) in eval mode under no-grad and
/// scores every position whose target is not `ignore_index` and whose mask (if the dataset has
/// one) is 1. Throws kd::Error (kShape) when logits and targets do not line up, naming both shapes.
///
/// Example: `double bpb = kd::evaluate_language_model(*lm, validation).bits_per_byte();`
LanguageModelMetrics evaluate_language_model(Model& model, const data::TensorDataset& dataset,
                                             int64_t ignore_index = -100, int64_t batch_size = 64);

/// Language-model scores from a summed natural-log loss over predicted bytes:
/// bits per byte = nll_sum / (n_bytes · ln 2), perplexity = exp(nll_sum / n_tokens).
double bits_per_byte(double nll_sum_nats, int64_t n_bytes);
double perplexity(double nll_sum_nats, int64_t n_tokens);

}  // namespace kd
