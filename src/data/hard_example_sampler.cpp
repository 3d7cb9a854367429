#include "kd/data/hard_example_sampler.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "kd/data/tensor_dataset.h"

namespace kd::data {

namespace {

// Per-token scores [N] or [N, L] -> per-example [N]: the mean over each sequence's (masked) tokens.
torch::Tensor per_example(const torch::Tensor& scores, const torch::Tensor& mask, const char* what) {
  if (scores.dim() == 1) return scores;
  if (!mask.defined()) return scores.mean(1);
  if (mask.sizes() != scores.sizes()) {
    throw Error(ErrorCategory::kShape, fmt::format("{}: mask {} must be [N, L] = {}", what, shape_string(mask),
                                                   shape_string(scores)));
  }
  const auto m = (mask != 0).to(scores.scalar_type());
  return (scores * m).sum(1) / m.sum(1).clamp_min(1);
}

}  // namespace

torch::Tensor predictive_entropy(const torch::Tensor& logits, double temperature, const torch::Tensor& mask) {
  if (logits.dim() != 2 && logits.dim() != 3) {
    throw Error(ErrorCategory::kShape,
                fmt::format("predictive_entropy: logits {} must be [N, C] or [N, L, C]", shape_string(logits)));
  }
  const auto log_p = torch::log_softmax(logits / temperature, -1);
  return per_example(-(log_p.exp() * log_p).sum(-1), mask, "predictive_entropy");
}

torch::Tensor disagreement(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           double temperature, const torch::Tensor& mask) {
  if (student_logits.sizes() != teacher_logits.sizes() || (student_logits.dim() != 2 && student_logits.dim() != 3)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("disagreement: student logits {} and teacher logits {} must be the same [N, C] or [N, L, C]",
                            shape_string(student_logits), shape_string(teacher_logits)));
  }
  const auto log_ps = torch::log_softmax(student_logits / temperature, -1);
  const auto log_pt = torch::log_softmax(teacher_logits / temperature, -1);
  return per_example((log_pt.exp() * (log_pt - log_ps)).sum(-1), mask, "disagreement");
}

HardExampleSampler::HardExampleSampler(int64_t size, HardExampleSamplerOptions options)
    : size_(size), options_(options) {
  if (size <= 0) throw Error(ErrorCategory::kValue, fmt::format("HardExampleSampler needs a positive size, got {}", size));
  if (!(options.mix() >= 0 && options.mix() <= 1) || !(options.floor() > 0)) {
    throw Error(ErrorCategory::kValue, fmt::format("HardExampleSampler: mix must be in [0, 1] (got {}) and floor > 0 (got {})",
                                                   options.mix(), options.floor()));
  }
  set_scores(torch::zeros({size}, torch::kFloat64));
}

void HardExampleSampler::set_scores(const torch::Tensor& scores) {
  if (scores.dim() != 1 || scores.size(0) != size_) {
    throw Error(ErrorCategory::kShape,
                fmt::format("HardExampleSampler: scores {} must be [{}], one per example", shape_string(scores), size_));
  }
  const auto s = scores.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (!torch::isfinite(s).all().item<bool>() || (s < 0).any().item<bool>()) {
    throw Error(ErrorCategory::kValue, "HardExampleSampler: scores must be finite and >= 0");
  }
  cumulative_.resize(static_cast<size_t>(size_));
  const double* p = s.data_ptr<double>();
  double acc = 0;
  for (int64_t i = 0; i < size_; ++i) cumulative_[i] = (acc += p[i] + options_.floor());
  for (double& c : cumulative_) c /= acc;
}

torch::Tensor HardExampleSampler::probabilities() const {
  auto out = torch::empty({size_}, torch::kFloat64);
  double prev = 0;
  for (int64_t i = 0; i < size_; ++i) {
    out[i] = cumulative_[i] - prev;
    prev = cumulative_[i];
  }
  return out;
}

std::vector<int64_t> HardExampleSampler::epoch_order(int64_t epoch) const {
  const auto hard = static_cast<int64_t>(std::llround(options_.mix() * double(size_)));
  std::vector<int64_t> order = data::epoch_order(size_, options_.seed(), epoch);
  order.resize(static_cast<size_t>(size_ - hard));
  std::mt19937_64 rng(options_.seed() * 0x9E3779B97F4A7C15ULL + 0x5bd1e995ULL + static_cast<uint64_t>(epoch));
  for (int64_t k = 0; k < hard; ++k) {
    const double u = double(rng() >> 11) * 0x1.0p-53;  // uniform in [0, 1)
    const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
    order.push_back(std::min<int64_t>(it - cumulative_.begin(), size_ - 1));
  }
  // Interleave the two parts so batches mix hard and uniform examples.
  for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i) {
    std::swap(order[i], order[static_cast<size_t>(rng() % static_cast<uint64_t>(i + 1))]);
  }
  return order;
}

}  // namespace kd::data
