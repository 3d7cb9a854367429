#pragma once
/// \file
/// A byte-level causal transformer language model with temperature / top-k generation.

#include <cstdint>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kd/core/model.h"
#include "kd/models/sampling.h"
#include "kd/models/transformer_block.h"
#include "kd/nn/linear.h"

namespace kd::models {

/// Options for CausalLM. The defaults are benchmark workload W3's teacher (6 layers, d 384,
/// 6 heads, ffn 4·d); its student is `.layers(2).d_model(192).heads(3)`: 10 844 160 and 988 416
/// parameters (the formula below; test_causal_lm checks it).
struct CausalLMOptions {
  /// Token ids are 0 … vocab−1 (256: bytes).
  TORCH_ARG(int64_t, vocab) = 256;
  TORCH_ARG(int64_t, d_model) = 384;
  TORCH_ARG(int64_t, heads) = 6;
  /// Feed-forward width; 0 = 4·d_model.
  TORCH_ARG(int64_t, ffn) = 0;
  TORCH_ARG(int64_t, layers) = 6;
  /// Dropout after the embedding, on attention probabilities and on both residual branches (training mode).
  TORCH_ARG(double, dropout) = 0.1;
  /// Longest accepted context; generate() keeps the last max_len tokens as its window.
  TORCH_ARG(int64_t, max_len) = 1024;
  /// RoPE base (θ_i = base^(−2i/d)).
  TORCH_ARG(double, rope_base) = 10000.0;
};

/// A decoder over token ids [B, L] (int64): the TransformerEncoder's blocks (pre-LN, RoPE,
/// GELU) with a causal mask, so position t attends to positions ≤ t only:
///
///   e = Embedding(tokens)                      extras["embeddings"] = e   [B, L, D]
///   x₀ = Dropout(e),  x_l = Block_l(x_{l−1}; key j hidden from query t when j > t)
///   logits = lm_head(LN_f(x_n))  [B, L, V]     (lm_head: no bias, not tied to the embedding)
///
/// logits[:, t] predicts token t+1 and depends on tokens 0 … t only. Outputs: `hidden_states[l−1]`
/// = x_l ([B, L, D], before LN_f; the embedding is `extras["embeddings"]`, not among them),
/// `attentions[l−1]` = block l's probabilities [B, H, L, L] (zero above the diagonal).
/// `extras["embeddings"]` is differentiable as in TransformerEncoder (for R1 on tokens).
///
/// Parameters: V·D + n·(4D² + 2D·F + F + 9D) + 2D + D·V.
///
/// Example:
/// ```
/// kd::models::CausalLM lm(kd::models::CausalLMOptions().layers(2).d_model(192).heads(3));
/// auto out = lm->forward(tokens);                        // out.logits [B, L, 256]
/// auto text = lm->generate(prompt, 100, kd::models::GenerateOptions().temperature(0.8).top_k(20).seed(1));
/// ```
class CausalLMImpl : public Model {
 public:
  explicit CausalLMImpl(CausalLMOptions options = {});
  ModelOutput forward(const torch::Tensor& tokens) override;

  /// Appends `max_new_tokens` tokens to `prompt` ([B, L₀] or [L₀] int64, L₀ ≥ 1) and returns
  /// prompt + continuation in the prompt's rank. Each step runs the model on the last max_len
  /// tokens (no key/value cache: cost grows with the window) and draws the next token of every
  /// row from the last position's logits with TokenSampler(options): greedy when temperature
  /// is 0. Runs in eval mode without autograd and restores the training flag afterwards.
  torch::Tensor generate(const torch::Tensor& prompt, int64_t max_new_tokens, const GenerateOptions& options = {});

  CausalLMOptions options;
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  kd::nn::Linear lm_head{nullptr};

 private:
  ModelOutput run(const torch::Tensor& tokens, bool keep_layers);
  std::vector<TransformerBlock> block_list_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(CausalLM);

/// Byte-level text as token ids: every byte of `text` (0–255) as int64 [L], for CausalLM::generate.
///
/// Example: `auto out = lm->generate(kd::models::byte_tokens("Subject: "), 100);`
torch::Tensor byte_tokens(const std::string& text);

/// Token ids [L] as printable text: bytes 32–126 and '\n' as themselves, every other byte as '.'.
///
/// Example: `std::cout << kd::models::printable_bytes(lm->generate(prompt, 100)) << "\n";`
std::string printable_bytes(const torch::Tensor& tokens);

}  // namespace kd::models
