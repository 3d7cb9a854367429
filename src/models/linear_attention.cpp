#include "kd/models/linear_attention.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "token_input.h"

namespace kd::models {

LinearSelfAttentionImpl::LinearSelfAttentionImpl(LinearSelfAttentionOptions options_) : options(std::move(options_)) {
  reset();
}

void LinearSelfAttentionImpl::reset() {
  const int64_t d = options.d_model();
  head_size_ = detail::head_size("linear attention", d, options.heads(), options.head_dim());
  const int64_t inner = options.heads() * head_size_;
  if (!(options.eps() > 0.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("linear attention: eps must be > 0, got {}", options.eps()));
  }
  q_proj = register_module("q_proj", kd::nn::Linear(d, inner));
  k_proj = register_module("k_proj", kd::nn::Linear(d, inner));
  v_proj = register_module("v_proj", kd::nn::Linear(d, inner));
  o_proj = register_module("o_proj", kd::nn::Linear(inner, d));
}

AttentionOutput LinearSelfAttentionImpl::forward(const torch::Tensor& x, const RotaryTables& rope,
                                                 const torch::Tensor& blocked) {
  detail::check_attention_input("linear attention", x, options.d_model());
  const int64_t H = options.heads(), dh = head_size_;
  // [B, L, D] -> [B, H, L, d] without B or L as numbers (a trace keeps them free; see MultiHeadSelfAttention).
  auto heads = [&](const torch::Tensor& t) { return t.unflatten(-1, {H, dh}).transpose(1, 2); };
  auto qf = torch::elu(heads(q_proj->forward(x))) + 1.0;  // φ(q) > 0
  auto kf = torch::elu(heads(k_proj->forward(x))) + 1.0;
  const auto v = heads(v_proj->forward(x));
  if (blocked.defined()) {
    if (blocked.dim() != 4 || blocked.size(2) != 1 || blocked.size(1) != 1) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("linear attention masks keys only (a bool [B, 1, 1, L] padding mask), got a mask of shape "
                              "{}; a causal (per-query) mask needs softmax attention",
                              shape_string(blocked)));
    }
    // [B, 1, 1, L] -> keep [B, 1, L, 1]: masked keys add nothing to S or z.
    kf = kf * blocked.logical_not().transpose(-2, -1).to(kf.scalar_type());
  }
  const auto s = torch::matmul(apply_rotary(kf, rope).transpose(-2, -1), v);             // [B, H, d, d]
  const auto z = kf.sum(-2, /*keepdim=*/true);                                              // [B, H, 1, d]
  const auto norm = (qf * z).sum(-1, /*keepdim=*/true) + options.eps();                    // [B, H, L, 1]
  const auto context = torch::matmul(apply_rotary(qf, rope), s) / norm;                    // [B, H, L, d]
  AttentionOutput out;
  out.output = o_proj->forward(context.transpose(1, 2).flatten(2));
  if (options.surrogate()) out.probabilities = torch::matmul(qf, kf.transpose(-2, -1)) / norm;  // [B, H, L, L]
  return out;
}

}  // namespace kd::models
