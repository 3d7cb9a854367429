#include "kd/train/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "eval_batches.h"
#include "kd/train/calibration.h"

namespace kd {

ClassificationMetrics::ClassificationMetrics(int64_t num_classes)
    : num_classes_(num_classes), confusion_(torch::zeros({num_classes, num_classes}, torch::kInt64)) {
  if (num_classes < 2) {
    throw Error(ErrorCategory::kValue, fmt::format("ClassificationMetrics needs >= 2 classes, got {}", num_classes));
  }
}

ClassificationMetrics ClassificationMetrics::from_confusion(const torch::Tensor& confusion) {
  if (confusion.dim() != 2 || confusion.size(0) != confusion.size(1)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("a confusion matrix must be square [C, C], got {}", shape_string(confusion)));
  }
  ClassificationMetrics m(confusion.size(0));
  m.confusion_ = confusion.to(torch::kCPU, torch::kInt64).clone();
  return m;
}

void ClassificationMetrics::update(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (logits.dim() != 2 || logits.size(1) != num_classes_) {
    throw Error(ErrorCategory::kShape, fmt::format("ClassificationMetrics: logits {} must be [B, {}]",
                                                   shape_string(logits), num_classes_));
  }
  update_predictions(logits.argmax(1), targets);
}

void ClassificationMetrics::update_predictions(const torch::Tensor& predictions, const torch::Tensor& targets) {
  if (predictions.sizes() != targets.sizes() || predictions.dim() != 1) {
    throw Error(ErrorCategory::kShape, fmt::format("ClassificationMetrics: predictions {} and targets {} must both be [B]",
                                                   shape_string(predictions), shape_string(targets)));
  }
  auto p = predictions.to(torch::kCPU, torch::kLong), t = targets.to(torch::kCPU, torch::kLong);
  if (t.numel() > 0 && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= num_classes_)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("ClassificationMetrics: targets must be in [0, {}), got [{}, {}]", num_classes_,
                            t.min().item<int64_t>(), t.max().item<int64_t>()));
  }
  confusion_ += torch::bincount(t * num_classes_ + p, {}, num_classes_ * num_classes_).view({num_classes_, num_classes_});
}

int64_t ClassificationMetrics::count() const { return confusion_.sum().item<int64_t>(); }

double ClassificationMetrics::accuracy() const {
  const int64_t n = count();
  return n == 0 ? 0.0 : double(confusion_.diagonal().sum().item<int64_t>()) / double(n);
}

std::vector<double> ClassificationMetrics::per_class_f1() const {
  std::vector<double> out;
  auto tp = confusion_.diagonal();
  auto predicted = confusion_.sum(0), actual = confusion_.sum(1);
  for (int64_t c = 0; c < num_classes_; ++c) {
    const double t = tp[c].item<int64_t>();
    const double denom = double(predicted[c].item<int64_t>() + actual[c].item<int64_t>());
    out.push_back(denom == 0 ? 0.0 : 2.0 * t / denom);
  }
  return out;
}

std::vector<double> ClassificationMetrics::per_class_recall() const {
  std::vector<double> out;
  auto tp = confusion_.diagonal();
  auto actual = confusion_.sum(1);
  for (int64_t c = 0; c < num_classes_; ++c) {
    const auto a = actual[c].item<int64_t>();
    out.push_back(a == 0 ? 0.0 : double(tp[c].item<int64_t>()) / double(a));
  }
  return out;
}

double ClassificationMetrics::macro_f1() const {
  const auto f1 = per_class_f1();
  double s = 0;
  for (double v : f1) s += v;
  return s / double(f1.size());
}

ClassificationMetrics evaluate_classifier(Model& model, const data::TensorDataset& dataset, int64_t num_classes,
                                          int64_t batch_size, CalibrationMetrics* calibration) {
  ClassificationMetrics metrics(num_classes);
  detail::for_each_batch(model, dataset, batch_size, [&](int64_t start, int64_t end, const torch::Tensor& logits) {
    const auto cpu = logits.cpu();
    const auto targets = dataset.targets.slice(0, start, end);
    metrics.update(cpu, targets);
    if (calibration) calibration->update(cpu, targets);
  });
  return metrics;
}

double LanguageModelMetrics::nll() const {
  if (tokens <= 0) throw Error(ErrorCategory::kValue, "language-model metrics: no tokens were scored");
  return nll_sum / double(tokens);
}
double LanguageModelMetrics::perplexity() const { return kd::perplexity(nll_sum, tokens); }
double LanguageModelMetrics::bits_per_byte() const { return kd::bits_per_byte(nll_sum, tokens); }
double LanguageModelMetrics::token_accuracy() const {
  if (tokens <= 0) throw Error(ErrorCategory::kValue, "language-model metrics: no tokens were scored");
  return token_correct / double(tokens);
}

LanguageModelMetrics evaluate_language_model(Model& model, const data::TensorDataset& dataset, int64_t ignore_index,
                                             int64_t batch_size) {
  LanguageModelMetrics m;
  detail::for_each_batch(model, dataset, batch_size, [&](int64_t start, int64_t end, const torch::Tensor& output) {
    const auto logits = output.to(torch::kCPU, torch::kDouble);
    const auto targets = dataset.targets.slice(0, start, end);
    if (logits.dim() != 3 || targets.dim() != 2 || logits.size(0) != targets.size(0) || logits.size(1) != targets.size(1)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("evaluate_language_model: logits {} and targets {} do not line up; expected [B, L, V] "
                              "and [B, L]",
                              shape_string(logits), shape_string(targets)));
    }
    auto counted = targets != ignore_index;
    if (dataset.mask.defined()) counted = counted & (dataset.mask.slice(0, start, end) != 0);
    const auto safe = targets.masked_fill(~counted, 0);
    const auto logp = torch::log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1);
    m.nll_sum -= logp.masked_select(counted).sum().item<double>();
    m.token_correct += (logits.argmax(-1) == targets).masked_select(counted).sum().item<double>();
    m.tokens += counted.sum().item<int64_t>();
  });
  return m;
}

double bits_per_byte(double nll_sum_nats, int64_t n_bytes) {
  if (n_bytes <= 0) throw Error(ErrorCategory::kValue, "bits_per_byte: no bytes were scored");
  return nll_sum_nats / (double(n_bytes) * std::log(2.0));
}

double perplexity(double nll_sum_nats, int64_t n_tokens) {
  if (n_tokens <= 0) throw Error(ErrorCategory::kValue, "perplexity: no tokens were scored");
  return std::exp(nll_sum_nats / double(n_tokens));
}

}  // namespace kd
