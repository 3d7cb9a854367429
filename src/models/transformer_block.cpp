#include "kd/models/transformer_block.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::models {

TransformerBlockImpl::TransformerBlockImpl(TransformerBlockOptions options_) : options(std::move(options_)) {
  reset();
}

void TransformerBlockImpl::reset() {
  const int64_t d = options.d_model();
  if (options.ffn() <= 0) {
    throw Error(ErrorCategory::kValue, fmt::format("transformer block: ffn must be > 0, got {}", options.ffn()));
  }
  auto ln = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}).eps(options.layer_norm_eps()));
  };
  ln1 = register_module("ln1", ln());
  if (options.attention() == AttentionKind::kLinear) {
    // No dropout on attention weights: the linear form never forms them (the residual dropout remains).
    linear_attn = register_module(
        "attn", LinearSelfAttention(LinearSelfAttentionOptions(d, options.heads())
                                      .head_dim(options.head_dim())
                                      .surrogate(options.attention_surrogate())));
  } else {
    attn = register_module(
        "attn", MultiHeadSelfAttention(MultiHeadSelfAttentionOptions(d, options.heads())
                                          .head_dim(options.head_dim())
                                          .dropout(options.dropout())));
  }
  ln2 = register_module("ln2", ln());
  fc1 = register_module("fc1", kd::nn::Linear(d, options.ffn()));
  fc2 = register_module("fc2", kd::nn::Linear(options.ffn(), d));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

AttentionOutput TransformerBlockImpl::forward(const torch::Tensor& x, const RotaryTables& rope,
                                              const torch::Tensor& blocked) {
  auto a = attn ? attn->forward(ln1->forward(x), rope, blocked) : linear_attn->forward(ln1->forward(x), rope, blocked);
  const auto h = x + dropout->forward(a.output);
  const auto out = h + dropout->forward(fc2->forward(torch::gelu(fc1->forward(ln2->forward(h)))));
  return {out, a.probabilities};
}

}  // namespace kd::models
