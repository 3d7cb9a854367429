#include "kd/data/tensor_dataset.h"

#include <numeric>
#include <random>

#include <torch/torch.h>

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

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  if (!shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    return order;
  }
  return permutation(n, seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
}

}  // namespace kd::data
