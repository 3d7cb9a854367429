#include "kd/models/rope.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::models {

RotaryTables rotary_tables(int64_t length, int64_t head_dim, double base, const torch::TensorOptions& options,
                           int64_t offset) {
  if (head_dim <= 0 || head_dim % 2 != 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("RoPE needs a positive even head dimension (it rotates pairs), got {}", head_dim));
  }
  if (length < 0 || offset < 0) {
    throw Error(ErrorCategory::kValue, fmt::format("RoPE: length {} and offset {} must be >= 0", length, offset));
  }
  if (!(base > 1.0)) throw Error(ErrorCategory::kValue, fmt::format("RoPE base must be > 1, got {}", base));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto inv_freq = torch::pow(base, -torch::arange(0, head_dim, 2, f64) / static_cast<double>(head_dim));
  const auto pos = torch::arange(offset, offset + length, f64);
  const auto angles = torch::outer(pos, inv_freq);  // [L, d/2]
  const auto full = torch::cat({angles, angles}, -1);
  return {full.cos().to(options), full.sin().to(options)};
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables) {
  if (x.dim() < 2 || !tables.cos.defined() || tables.cos.dim() != 2 || x.size(-2) != tables.cos.size(0) ||
      x.size(-1) != tables.cos.size(1)) {
    throw Error(ErrorCategory::kShape, fmt::format("apply_rotary: x {} needs tables [L, d] of its last two sizes, got {}",
                                                   shape_string(x), shape_string(tables.cos)));
  }
  const int64_t half = x.size(-1) / 2;
  const auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * tables.cos + rotated * tables.sin;
}

}  // namespace kd::models
