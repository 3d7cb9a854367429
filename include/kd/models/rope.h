#pragma once
/// \file
/// Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"), in the "rotate-half" layout.

#include <cstdint>

#include <torch/types.h>

namespace kd::models {

/// The cos and sin tables of RoPE for positions offset … offset+length−1, each [length, head_dim]:
///
///   θ_i = base^(−2i/d),  i = 0 … d/2−1,   angle(p, i) = p·θ_i,
///   cos[p] = cat(cos(p·θ), cos(p·θ)),  sin[p] = cat(sin(p·θ), sin(p·θ))
///
/// computed in float64 (p·θ loses digits in float32 for long sequences) and returned in
/// `options`' dtype and device.
///
/// Example: `auto t = kd::models::rotary_tables(128, 64, 10000.0, q.options());`
struct RotaryTables {
  torch::Tensor cos;
  torch::Tensor sin;
};

/// See RotaryTables. kd::Error (kValue) when head_dim is not a positive even number,
/// length or offset is negative, or base is not > 1.
RotaryTables rotary_tables(int64_t length, int64_t head_dim, double base, const torch::TensorOptions& options,
                           int64_t offset = 0);

/// Rotates x [..., L, d] (positions along dimension −2) by its position:
///
///   RoPE(x)_p = x_p ⊙ cos[p] + rotate_half(x_p) ⊙ sin[p],   rotate_half(x) = cat(−x[d/2:], x[:d/2]),
///
/// i.e. each pair (x_i, x_{i+d/2}) turns by the angle p·θ_i. Rotations preserve norms, and for
/// queries and keys (R_m q)·(R_n k) depends on the positions only through m − n.
///
/// Example:
/// ```
/// auto tables = kd::models::rotary_tables(q.size(-2), q.size(-1), 10000.0, q.options());
/// auto q_rot = kd::models::apply_rotary(q, tables);   // q: [B, H, L, d]
/// ```
torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables);

}  // namespace kd::models
