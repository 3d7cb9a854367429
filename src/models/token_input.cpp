#include "token_input.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::models::detail {

torch::Tensor check_tokens(const torch::Tensor& tokens, int64_t vocab, int64_t max_len, const char* model) {
  if (!tokens.defined() || tokens.dim() != 2) {
    throw Error(ErrorCategory::kShape,
                fmt::format("{} expects token ids [B, L] (rank 2), got {} (rank {})", model, shape_string(tokens),
                            tokens.defined() ? tokens.dim() : 0));
  }
  if (tokens.is_floating_point() || tokens.is_complex() || tokens.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{} expects integer token ids (int64), got dtype {}", model,
                            c10::toString(tokens.scalar_type())));
  }
  if (tokens.size(1) == 0) throw Error(ErrorCategory::kShape, fmt::format("{}: the sequences are empty ({})", model, shape_string(tokens)));
  if (tokens.size(1) > max_len) {
    throw Error(ErrorCategory::kShape,
                fmt::format("{}: sequence length {} exceeds max_len {}; truncate the input or raise the model's "
                            "max_len option",
                            model, tokens.size(1), max_len));
  }
  auto t = tokens.to(torch::kInt64);
  if (t.numel() > 0) {
    const auto bad = (t < 0).logical_or(t >= vocab);
    if (bad.any().item<bool>()) {
      const auto where = bad.nonzero()[0].cpu();
      const int64_t b = where[0].item<int64_t>(), l = where[1].item<int64_t>();
      throw Error(ErrorCategory::kValue,
                  fmt::format("{}: token id {} at [{}, {}] is outside the vocabulary [0, {}); token ids must be "
                              "< vocab {}",
                              model, t[b][l].item<int64_t>(), b, l, vocab, vocab));
    }
  }
  return t;
}

void check_sizes(const char* model, int64_t vocab, int64_t d_model, int64_t heads, int64_t layers, int64_t max_len,
                 double dropout, double rope_base) {
  auto fail = [&](const std::string& what) { throw Error(ErrorCategory::kValue, fmt::format("{}: {}", model, what)); };
  if (vocab <= 0) fail(fmt::format("vocab must be > 0, got {}", vocab));
  if (layers <= 0) fail(fmt::format("layers must be > 0, got {}", layers));
  if (max_len <= 0) fail(fmt::format("max_len must be > 0, got {}", max_len));
  check_heads(model, d_model, heads);
  if (!(dropout >= 0.0 && dropout < 1.0)) fail(fmt::format("dropout must be in [0, 1), got {}", dropout));
  if (!(rope_base > 1.0)) fail(fmt::format("rope_base must be > 1, got {}", rope_base));
}

int64_t head_size(const char* layer, int64_t d_model, int64_t heads, int64_t head_dim) {
  if (head_dim == 0) {
    check_heads(layer, d_model, heads);
    return d_model / heads;
  }
  if (d_model <= 0 || heads <= 0 || head_dim < 0 || head_dim % 2 != 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{}: d_model {}, {} heads of head_dim {}: each must be positive and head_dim even (RoPE "
                            "rotates pairs)",
                            layer, d_model, heads, head_dim));
  }
  return head_dim;
}

void check_heads(const char* layer, int64_t d_model, int64_t heads) {
  if (d_model <= 0 || heads <= 0 || d_model % heads != 0 || (d_model / heads) % 2 != 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{}: d_model {} must split into {} heads of an even size (RoPE rotates pairs)", layer,
                            d_model, heads));
  }
}

void check_attention_input(const char* layer, const torch::Tensor& x, int64_t d_model) {
  if (x.dim() != 3 || x.size(2) != d_model) {
    throw Error(ErrorCategory::kShape,
                fmt::format("{} expects x [B, L, {}], got {}", layer, d_model, shape_string(x)));
  }
}

int64_t ffn_width(const char* model, int64_t ffn, int64_t d_model) {
  if (ffn < 0) throw Error(ErrorCategory::kValue, fmt::format("{}: ffn must be >= 0 (0 = 4·d_model), got {}", model, ffn));
  return ffn == 0 ? 4 * d_model : ffn;
}

}  // namespace kd::models::detail
