#include "kd/models/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::models {

TokenSampler::TokenSampler(GenerateOptions options) : options_(options), rng_(options.seed()) {
  if (!(options_.temperature() >= 0.0) || !std::isfinite(options_.temperature())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GenerateOptions.temperature must be finite and >= 0 (0 = greedy), got {}",
                            options_.temperature()));
  }
  if (options_.top_k() < 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("GenerateOptions.top_k must be >= 0 (0 = all tokens), got {}", options_.top_k()));
  }
}

torch::Tensor TokenSampler::sample(const torch::Tensor& logits) {
  if (!logits.defined() || logits.dim() < 1 || logits.dim() > 2 || logits.size(-1) == 0) {
    throw Error(ErrorCategory::kShape,
                fmt::format("TokenSampler expects logits [B, V] or [V], got {}", shape_string(logits)));
  }
  const auto z = logits.detach().to(torch::kCPU, torch::kFloat64).reshape({-1, logits.size(-1)}).contiguous();
  const int64_t rows = z.size(0), V = z.size(1);
  const double T = options_.temperature();
  const int64_t k = (options_.top_k() == 0 || options_.top_k() > V) ? V : options_.top_k();
  std::vector<int64_t> picked(static_cast<size_t>(rows));
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::vector<double> weight(static_cast<size_t>(k));
  const double* data = z.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = data + r * V;
    double best = -std::numeric_limits<double>::infinity();
    int64_t best_i = -1;
    for (int64_t i = 0; i < V; ++i) {
      if (std::isnan(row[i])) {
        throw Error(ErrorCategory::kValue, fmt::format("TokenSampler: logit {} of row {} is NaN", i, r));
      }
      if (row[i] > best) best = row[i], best_i = i;
    }
    if (best_i < 0) {
      throw Error(ErrorCategory::kValue, fmt::format("TokenSampler: every logit of row {} is -inf", r));
    }
    if (T == 0.0) {
      picked[static_cast<size_t>(r)] = best_i;
      continue;
    }
    std::iota(order.begin(), order.end(), 0);
    // Highest logits first, lower id first among ties, so the kept set is well defined.
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [row](int64_t a, int64_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    double total = 0.0;
    for (int64_t j = 0; j < k; ++j) total += (weight[j] = std::exp((row[order[j]] - best) / T));
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
    int64_t choice = order[0];
    double cum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      cum += weight[j];
      if (u < cum && weight[j] > 0.0) {
        choice = order[j];
        break;
      }
    }
    picked[static_cast<size_t>(r)] = choice;
  }
  auto out = torch::tensor(picked, torch::kInt64);
  return logits.dim() == 1 ? out.squeeze(0) : out;
}

}  // namespace kd::models
