#include "kd/data/tensor_dataset.h"

#include <cmath>
#include <numeric>
#include <random>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::data {

TensorDataset TensorDataset::select(const torch::Tensor& indices) const {
  return {inputs.index_select(0, indices), targets.index_select(0, indices),
          mask.defined() ? mask.index_select(0, indices) : torch::Tensor()};
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  // std::shuffle's algorithm is unspecified; write Fisher–Yates so orders match everywhere.
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

TensorDataset keep_labels(const TensorDataset& dataset, double fraction, uint64_t seed, int64_t ignore_index) {
  if (!(fraction > 0 && fraction <= 1)) {
    throw Error(ErrorCategory::kValue, fmt::format("keep_labels: the labelled fraction must be in (0, 1], got {}", fraction));
  }
  const auto& t = dataset.targets;
  if (!t.defined() || t.dim() != 1 || t.is_floating_point() || t.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue,
                fmt::format("keep_labels: targets must be [N] integer class indices, got {}",
                            t.defined() ? shape_string(t) + " " + std::string(toString(t.scalar_type())) : "none"));
  }
  const int64_t n = dataset.size();
  const auto keep = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  const auto order = permutation(n, seed);
  std::vector<int64_t> hidden(order.begin() + keep, order.end());
  TensorDataset out = dataset;
  out.targets = t.clone();
  if (!hidden.empty()) {
    out.targets.index_fill_(0, torch::tensor(hidden, torch::kLong).to(t.device()), ignore_index);
  }
  return out;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  if (!shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    return order;
  }
  return permutation(n, seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
}

}  // namespace kd::data
