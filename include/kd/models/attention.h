#pragma once
/// \file
/// Multi-head self-attention with rotary position embedding on queries and keys.

#include <cstdint>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "kd/models/rope.h"
#include "kd/nn/linear.h"

namespace kd::models {

/// Options for MultiHeadSelfAttention.
struct MultiHeadSelfAttentionOptions {
  MultiHeadSelfAttentionOptions(int64_t d_model, int64_t heads) : d_model_(d_model), heads_(heads) {}
  /// Width of the input and output; must be divisible by `heads` into an even head size (unless head_dim is set).
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, heads);
  /// Size of one head; 0 (default) = d_model / heads. Another value makes q, k, v d_model → heads·head_dim
  /// and o_proj heads·head_dim → d_model: what kd::prune::compact leaves after removing pruned heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Dropout on the attention probabilities (training mode only); default 0.
  TORCH_ARG(double, dropout) = 0.0;
};

/// What one attention call returns.
struct AttentionOutput {
  torch::Tensor output;         ///< [B, L, D]
  torch::Tensor probabilities;  ///< [B, H, L, L], softmax over keys, before dropout
};

/// Self-attention over x [B, L, D] with H heads of size d = D/H:
///
///   q = RoPE(x W_qᵀ + b_q), k = RoPE(x W_kᵀ + b_k), v = x W_vᵀ + b_v     (split into heads)
///   P = softmax_k( q kᵀ / √d, −∞ where `blocked` ),   out = concat_h(P v) W_oᵀ + b_o
///
/// with RoPE as kd::models::apply_rotary. The layers are named `q_proj`, `k_proj`, `v_proj`,
/// `o_proj` (the usual LoRA targets are q_proj and v_proj). `blocked` is a bool tensor that
/// broadcasts to [B, H, L, L] (true = this query may not see this key), or undefined; a query
/// row must keep at least one key, else its softmax is NaN.
///
/// Example:
/// ```
/// kd::models::MultiHeadSelfAttention attn(kd::models::MultiHeadSelfAttentionOptions(64, 4));
/// auto rope = kd::models::rotary_tables(10, 16, 10000.0, x.options());
/// auto r = attn->forward(x, rope);   // x [B, 10, 64]: r.output [B, 10, 64], r.probabilities [B, 4, 10, 10]
/// ```
class MultiHeadSelfAttentionImpl : public torch::nn::Cloneable<MultiHeadSelfAttentionImpl> {
 public:
  explicit MultiHeadSelfAttentionImpl(MultiHeadSelfAttentionOptions options);
  void reset() override;
  AttentionOutput forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& blocked = {});
  /// Size of one head: options.head_dim, or d_model / heads when that is 0 (set by reset()).
  int64_t head_size() const { return head_size_; }

  MultiHeadSelfAttentionOptions options;
  kd::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  int64_t head_size_ = 0;
};
TORCH_MODULE(MultiHeadSelfAttention);

}  // namespace kd::models
