#pragma once
/// \file
/// Linear (kernel) self-attention: O(L) time and memory in the sequence length.

#include <cstdint>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"
#include "kd/models/attention.h"
#include "kd/models/rope.h"
#include "kd/nn/linear.h"

namespace kd::models {

/// Which self-attention a transformer block runs.
enum class AttentionKind {
  kSoftmax,  ///< MultiHeadSelfAttention: softmax(q kᵀ/√d) v, O(L²)
  kLinear,   ///< LinearSelfAttention: kernel feature map, O(L)
};
inline constexpr EnumNames<AttentionKind, 2> kAttentionKindNames{
    {{{AttentionKind::kSoftmax, "softmax"}, {AttentionKind::kLinear, "linear"}}}};

/// Options for LinearSelfAttention.
struct LinearSelfAttentionOptions {
  LinearSelfAttentionOptions(int64_t d_model, int64_t heads) : d_model_(d_model), heads_(heads) {}
  /// Width of the input and output; must be divisible by `heads` into an even head size (RoPE; unless head_dim is set).
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, heads);
  /// Size of one head; 0 (default) = d_model / heads. Another value makes q, k, v d_model → heads·head_dim
  /// and o_proj heads·head_dim → d_model: what kd::prune::compact leaves after removing pruned heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Return the attention surrogate (below) as AttentionOutput::probabilities. It is an [B, H, L, L]
  /// tensor, O(L²): leave it on for attention transfer, turn it off where only the output is needed.
  TORCH_ARG(bool, surrogate) = true;
  /// Added to the normaliser (a row whose keys are all masked gives 0, not NaN).
  TORCH_ARG(double, eps) = 1e-6;
};

/// Self-attention with the kernel feature map φ(x) = elu(x) + 1 (Katharopoulos et al., 2020) and
/// rotary positions on the feature-mapped queries and keys in the numerator only (RoFormer's linear
/// form), per head of size d = D/H:
///
///   q̂ᵢ = φ(qᵢ), k̂ⱼ = φ(kⱼ)                     (q, k, v = x Wᵀ + b, split into heads, as in MultiHeadSelfAttention)
///   outᵢ = Σⱼ mⱼ (Rᵢq̂ᵢ)ᵀ(Rⱼk̂ⱼ) vⱼ / (Σⱼ mⱼ q̂ᵢᵀk̂ⱼ + ε)
///        = (Rᵢq̂ᵢ)ᵀ S / (q̂ᵢᵀ z + ε),   S = Σⱼ mⱼ (Rⱼk̂ⱼ) vⱼᵀ ∈ ℝ^{d×d},  z = Σⱼ mⱼ k̂ⱼ ∈ ℝ^d
///
/// with Rᵢ the RoPE rotation of position i and mⱼ = 0 for masked (padding) keys. S and z are sums
/// over keys, so the cost is O(L·d²) time and O(d²) extra memory per head instead of softmax
/// attention's O(L²·d) and O(L²). Without rotation the weights mⱼq̂ᵢᵀk̂ⱼ / (q̂ᵢᵀz + ε) are positive
/// and sum to one over j; the rotation makes position matter but the weights it gives are neither.
///
/// Attention surrogate (AttentionOutput::probabilities when `surrogate`): Aᵢⱼ = mⱼ q̂ᵢᵀk̂ⱼ / (q̂ᵢᵀz + ε),
/// the un-rotated kernel weights — non-negative, rows summing to one (to within ε), 0 at masked keys —
/// so kd::AttentionMSE can compare it with a softmax teacher's maps. It is what the layer attends
/// with up to the rotation: a content-based, position-blind view. Matching it to a teacher that
/// attends by position (local windows, previous token) is therefore only partly meaningful.
///
/// `blocked` may only mask keys (a bool tensor broadcasting to [B, 1, 1, L], true = padding, as
/// kd::models::TransformerEncoder makes); a mask that differs per query (a causal mask) is refused
/// with kd::Error (kValue): a causal linear attention needs prefix sums of S, which this layer does not
/// compute. The layers are named q_proj, k_proj, v_proj, o_proj, as in MultiHeadSelfAttention, so
/// checkpoints, LoRA targets and QAT sites read the same.
///
/// Example:
/// ```
/// kd::models::LinearSelfAttention attn(kd::models::LinearSelfAttentionOptions(64, 4).surrogate(false));
/// auto r = attn->forward(x, kd::models::rotary_tables(x.size(1), 16, 10000.0, x.options()));  // r.output [B, L, 64]
/// ```
class LinearSelfAttentionImpl : public torch::nn::Cloneable<LinearSelfAttentionImpl> {
 public:
  explicit LinearSelfAttentionImpl(LinearSelfAttentionOptions options);
  void reset() override;
  AttentionOutput forward(const torch::Tensor& x, const RotaryTables& rope, const torch::Tensor& blocked = {});
  /// Size of one head: options.head_dim, or d_model / heads when that is 0 (set by reset()).
  int64_t head_size() const { return head_size_; }
  LinearSelfAttentionOptions options;
  kd::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t head_size_ = 0;
};
TORCH_MODULE(LinearSelfAttention);

}  // namespace kd::models
