#pragma once
/// \file
/// One pre-LayerNorm transformer block (attention + GELU feed-forward), shared by
/// kd::models::TransformerEncoder and kd::models::CausalLM.

#include <cstdint>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kd/models/attention.h"
#include "kd/models/linear_attention.h"
#include "kd/nn/linear.h"

namespace kd::models {

/// Options for TransformerBlock.
struct TransformerBlockOptions {
  TransformerBlockOptions(int64_t d_model, int64_t heads, int64_t ffn) : d_model_(d_model), heads_(heads), ffn_(ffn) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, heads);
  /// Size of one attention head; 0 (default) = d_model / heads (see MultiHeadSelfAttentionOptions::head_dim).
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Width of the feed-forward layer (fc1: d_model → ffn, fc2: ffn → d_model).
  TORCH_ARG(int64_t, ffn);
  /// Dropout on the attention probabilities and on both residual branches (training mode only).
  TORCH_ARG(double, dropout) = 0.0;
  /// ε of both LayerNorms.
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// Softmax attention (`attn` is a MultiHeadSelfAttention) or linear attention (`linear_attn`, a
  /// LinearSelfAttention registered under the same name "attn", so parameter names do not change).
  TORCH_ARG(AttentionKind, attention) = AttentionKind::kSoftmax;
  /// Linear attention only: also return its attention surrogate (O(L²); see LinearSelfAttention).
  TORCH_ARG(bool, attention_surrogate) = true;
};

/// A pre-LN block (the GPT-2 / pre-LN arrangement: normalise, transform, add):
///
///   h   = x + Dropout(Attention(LN₁(x)))
///   out = h + Dropout(fc2(GELU(fc1(LN₂(h)))))
///
/// GELU is the exact erf form. Sub-modules: `ln1`, `attn` (MultiHeadSelfAttention: q_proj, k_proj,
/// v_proj, o_proj), `ln2`, `fc1`, `fc2`. The residual stream is never normalised inside the block,
/// so a stack needs a final LayerNorm after its last block (both models have `ln_f`).
///
/// Example:
/// ```
/// kd::models::TransformerBlock block(kd::models::TransformerBlockOptions(64, 4, 256));
/// auto r = block->forward(x, kd::models::rotary_tables(x.size(1), 16, 10000.0, x.options()));
/// ```
class TransformerBlockImpl : public torch::nn::Cloneable<TransformerBlockImpl> {
 public:
  explicit TransformerBlockImpl(TransformerBlockOptions options);
  void reset() override;
  /// x [B, L, D]; `blocked` as in MultiHeadSelfAttention (linear attention: key padding only). Returns
  /// the block output [B, L, D] and the attention probabilities [B, H, L, L] (linear attention: its
  /// surrogate, or undefined when attention_surrogate is off).
  AttentionOutput forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& blocked = {});

  TransformerBlockOptions options;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  MultiHeadSelfAttention attn{nullptr};       ///< softmax attention, or null
  LinearSelfAttention linear_attn{nullptr};   ///< linear attention, or null
  kd::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(TransformerBlock);

}  // namespace kd::models
