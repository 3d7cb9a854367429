#pragma once
/// \file
/// A byte/token transformer encoder with RoPE, a masked-mean classification head and dynamic depth.

#include <cstdint>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kd/core/model.h"
#include "kd/models/transformer_block.h"
#include "kd/nn/linear.h"

namespace kd::models {

/// Options for TransformerEncoder. The defaults are a 12-layer byte model (d 256, 4 heads,
/// ffn 1024) for spam/ham classification; benchmark workload W2's teacher is `.layers(6)`,
/// its student `.layers(2).d_model(128).heads(2)` (ffn 4·d = 512): 4 805 122 and 429 826 parameters
/// with the 2-class head (the formula below; test_transformer_encoder checks it).
struct TransformerEncoderOptions {
  /// Token ids are 0 … vocab−1 (256: bytes).
  TORCH_ARG(int64_t, vocab) = 256;
  TORCH_ARG(int64_t, d_model) = 256;
  TORCH_ARG(int64_t, heads) = 4;
  /// Feed-forward width; 0 = 4·d_model.
  TORCH_ARG(int64_t, ffn) = 0;
  TORCH_ARG(int64_t, layers) = 12;
  /// Dropout after the embedding, on attention probabilities and on both residual branches (training mode).
  TORCH_ARG(double, dropout) = 0.1;
  /// Longest accepted sequence (RoPE has no learned positions; this is a guard, not a table size).
  TORCH_ARG(int64_t, max_len) = 1024;
  /// RoPE base (θ_i = base^(−2i/d)).
  TORCH_ARG(double, rope_base) = 10000.0;
  /// Token id of padding, or −1 for none. When >= 0, keys equal to it are masked out of
  /// attention, mean pooling skips those positions, and dynamic depth does not count them.
  TORCH_ARG(int64_t, pad_token) = -1;
  /// Classes of the head over the pooled output; 0 = no head (logits are then the pooled [B, D]).
  TORCH_ARG(int64_t, num_classes) = 2;
  /// Run fewer layers for short inputs (see TransformerEncoderImpl::depth_for).
  TORCH_ARG(bool, dynamic_depth) = false;
  /// Real-length thresholds, strictly increasing: length ≤ depth_thresholds[i] runs depth_layers[i] layers
  /// (the first i that fits); longer inputs run all `layers`.
  TORCH_ARG(std::vector<int64_t>, depth_thresholds) = std::vector<int64_t>{128, 512};
  /// Layers run per threshold, non-decreasing, each in [1, layers].
  TORCH_ARG(std::vector<int64_t>, depth_layers) = std::vector<int64_t>{4, 8};
  /// Every block's attention: softmax (O(L²)) or linear (kernel feature map, O(L); see
  /// LinearSelfAttention). With linear attention `attentions` holds each block's attention surrogate,
  /// or nothing when attention_maps is off.
  TORCH_ARG(AttentionKind, attention) = AttentionKind::kSoftmax;
  /// Linear attention only: compute the O(L²) surrogates for `attentions` (needed by attention transfer).
  TORCH_ARG(bool, attention_maps) = true;
};

/// An encoder over token ids [B, L] (int64):
///
///   e = Embedding(tokens)                      extras["embeddings"] = e   [B, L, D]
///   x₀ = Dropout(e),  x_l = Block_l(x_{l−1})   l = 1 … n   (TransformerBlock: pre-LN, RoPE, GELU)
///   h = LN_f(x_n),  pooled = Σ_j m_j h_j / max(1, Σ_j m_j)   (m_j = 0 at padding, else 1)
///   logits = head(pooled) [B, num_classes]
///
/// Outputs: `hidden_states[l−1]` = x_l, the residual stream after block l ([B, L, D], before
/// LN_f; the embedding is not among them, it is `extras["embeddings"]`), `attentions[l−1]` =
/// block l's attention probabilities [B, H, L, L], `extras["pooled"]` [B, D]. With padding
/// (pad_token >= 0), padded keys get probability 0 in every row; a row that is padding from end
/// to end masks nothing (so its numbers stay finite) and pools to zeros. Outputs at real
/// positions do not change when padding is appended.
///
/// `extras["embeddings"]` is differentiable: when grad mode is on and the embedding weight is
/// frozen (a teacher run with Teacher::forward_with_input_grad), it is made a leaf that requires
/// grad, so kd::GradientMatching with `input_key("embeddings")` can take input gradients of
/// token models.
///
/// Dynamic depth (`dynamic_depth`): the batch's longest real length (non-padding tokens per row)
/// picks the number of blocks that run, the same in training and evaluation; `hidden_states`
/// and `attentions` then hold only those layers, and LN_f and the head follow the last one.
///
/// Parameters: V·D + n·(4D² + 2D·F + F + 9D) + 2D + (D·C + C) (n blocks, F = ffn, C = classes);
/// names `embed.weight`, `blocks.<i>.{ln1,attn.{q_proj,k_proj,v_proj,o_proj},ln2,fc1,fc2}.*`,
/// `ln_f.*`, `head.*`.
///
/// Example:
/// ```
/// kd::models::TransformerEncoder enc(
///     kd::models::TransformerEncoderOptions().layers(6).pad_token(0).dynamic_depth(true)
///         .depth_thresholds({128, 512}).depth_layers({2, 4}));
/// kd::ModelOutput out = enc->forward(tokens);   // tokens int64 [B, L]; out.logits [B, 2]
/// ```
class TransformerEncoderImpl : public Model {
 public:
  explicit TransformerEncoderImpl(TransformerEncoderOptions options = {});
  ModelOutput forward(const torch::Tensor& tokens) override;

  /// Blocks that run for a batch whose longest real length is `real_length`: `layers` unless
  /// `dynamic_depth`, else depth_layers[i] for the first threshold with real_length ≤ depth_thresholds[i].
  int64_t depth_for(int64_t real_length) const;

  TransformerEncoderOptions options;
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  kd::nn::Linear head{nullptr};

 private:
  std::vector<TransformerBlock> block_list_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(TransformerEncoder);

}  // namespace kd::models
