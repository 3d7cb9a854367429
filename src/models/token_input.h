#pragma once
// Internal: validation shared by the token models (TransformerEncoder, CausalLM).

#include <cstdint>

#include <torch/types.h>

namespace kd::models::detail {

/// tokens as int64 [B, L]; kd::Error naming the value and the limit for a wrong rank or dtype
/// (kShape / kValue), an empty sequence, L > max_len, or an id outside [0, vocab) (kValue).
torch::Tensor check_tokens(const torch::Tensor& tokens, int64_t vocab, int64_t max_len, const char* model);

/// kd::Error (kValue) unless the shared size options describe a valid stack.
void check_sizes(const char* model, int64_t vocab, int64_t d_model, int64_t heads, int64_t layers, int64_t max_len,
                 double dropout, double rope_base);

/// The ffn width: `ffn`, or 4·d_model when it is 0.
int64_t ffn_width(const char* model, int64_t ffn, int64_t d_model);

/// Attention layers: kd::Error (kValue) unless d_model splits into `heads` heads of an even size (RoPE
/// rotates pairs), and (kShape) unless x is [B, L, d_model]. `layer` names the layer in the message.
void check_heads(const char* layer, int64_t d_model, int64_t heads);
/// The size of one head: d_model / heads when `head_dim` is 0 (checked as check_heads), else `head_dim`,
/// which must be even and positive (heads × head_dim may then differ from d_model: a compacted layer).
int64_t head_size(const char* layer, int64_t d_model, int64_t heads, int64_t head_dim);
void check_attention_input(const char* layer, const torch::Tensor& x, int64_t d_model);

}  // namespace kd::models::detail
