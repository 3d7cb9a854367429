#pragma once
/// \file
/// Removing pruned structure for good: smaller layers instead of zero rows.

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>

namespace kd::prune {

/// What compact() did to one kd::models::TransformerBlock.
struct CompactedBlock {
  std::string name;
  int64_t heads_before = 0, heads_after = 0;  ///< attention heads
  int64_t ffn_before = 0, ffn_after = 0;      ///< feed-forward channels (fc1 outputs)
};

/// What compact() removed from a model.
struct CompactReport {
  std::vector<CompactedBlock> blocks;  ///< every block seen, changed or not
  int64_t parameters_before = 0;
  int64_t parameters_after = 0;
  bool changed() const { return parameters_after != parameters_before; }
  /// "compacted 2 transformer block(s): parameters 116610 -> 83586 (71.7 %); blocks.0 heads 2 -> 2, ffn 256 -> 128; ..."
  std::string to_string() const;
};

/// Removes, in place, the structure that channel or head pruning (kd::prune::Granularity::kChannel on `fc1`,
/// kHead) left as exact zeros in every kd::models::TransformerBlock of `model`:
///
///   feed-forward channel j with fc1.weight[j, :] = 0 and fc1.bias[j] = 0:  GELU(0) = 0, so fc2's column j
///     never contributes — fc1 loses row j, fc2 column j;
///   attention head h whose v_proj rows (and bias) are zero:  its values are zero, so its output
///     P_h·v_h = 0 whatever it attends to — q/k/v_proj lose the head's rows, o_proj its columns; the
///     remaining heads keep their size (the layer's head_dim option), so RoPE and the 1/√d scale are unchanged.
///
/// Logits and hidden states are those of the zero-padded model up to float summation order; attention
/// probabilities lose the removed heads. A block keeps at least one head and one channel. The blocks'
/// options are updated, so a block's reset() or clone() rebuilds the compact shapes. Convolutions are left
/// as they are: a zeroed conv channel is not zero after BatchNorm's shift, so removing it would change the
/// outputs. Nothing the model is missing is an error: a model without blocks or zeros is returned unchanged.
///
/// Example:
/// ```
/// auto pruning = kd::prune::prepare(student.ptr(), kd::prune::Options().granularity(kd::prune::Granularity::kHead));
/// pruning->update(0.5);
/// pruning->apply();
/// auto report = kd::prune::compact(*student);   // half the heads of every block gone, outputs unchanged
/// ```
CompactReport compact(torch::nn::Module& model);

}  // namespace kd::prune
