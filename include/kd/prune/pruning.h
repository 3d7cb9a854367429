#pragma once
/// \file
/// Magnitude pruning of a model's weights: unstructured, by output channel, or by attention head.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"

namespace kd::prune {

/// What one pruning decision removes.
enum class Granularity {
  kUnstructured,  ///< single weights of Linear / Conv layers, the smallest |w| of each layer
  kChannel,       ///< output channels of Linear / Conv layers (a weight row and its bias), smallest L2 norm
  kHead,          ///< attention heads (their q/k/v rows and o_proj columns), smallest L2 norm
};
inline constexpr EnumNames<Granularity, 3> kGranularityNames{
    {{{Granularity::kUnstructured, "unstructured"}, {Granularity::kChannel, "channel"}, {Granularity::kHead, "head"}}}};

/// Options for prepare().
struct Options {
  TORCH_ARG(Granularity, granularity) = Granularity::kUnstructured;
  /// Layers to prune (kHead: attention modules): exact names, trailing dotted parts or "re:<regex>"
  /// (kd::NameMatcher); empty = every Linear / Conv layer (kHead: every attention module).
  TORCH_ARG(std::vector<std::string>, targets) = {};
  /// Layers never pruned (same patterns), e.g. the classifier head.
  TORCH_ARG(std::vector<std::string>, exclude) = {};
};

/// A pruned unit group: one layer (unstructured, channel) or one attention module (head).
struct SiteReport {
  std::string name;
  int64_t units = 0;         ///< weights, channels or heads the site has
  int64_t pruned_units = 0;  ///< of those, pruned
  int64_t parameters = 0;    ///< weight (and bias) elements the site covers
  int64_t zero_parameters = 0;
};

/// What pruning left, for logs and export reports.
struct Report {
  std::vector<SiteReport> sites;
  int64_t parameters = 0;       ///< covered by the sites
  int64_t zero_parameters = 0;  ///< of those, zero
  double sparsity() const { return parameters > 0 ? double(zero_parameters) / double(parameters) : 0.0; }
  /// "pruning (channel): 3 sites, 41.2 % of 33,600 weights zero; conv1 8/32 channels, ..."
  std::string to_string() const;
};

/// Magnitude pruning with masks (Zhu & Gupta's gradual pruning rule, layer by layer):
///
///   unstructured:  mask_w = 0 for the ⌊s·n⌋ weights of the layer with the smallest |w|
///   channel:       mask_c = 0 for the ⌊s·C_out⌋ output channels with the smallest ‖W[c]‖₂ (+ b[c]²)
///   head:          mask_h = 0 for the ⌊s·H⌋ heads with the smallest ‖(W_q, W_k, W_v rows of h, W_o columns of h)‖₂
///
/// with s the target sparsity of update(s). A pruned unit stays pruned (masks only shrink), so a
/// schedule that raises s step by step prunes gradually. apply() multiplies every covered tensor by
/// its mask, so pruned weights are exactly zero; mask_gradients() also zeroes their gradients so the
/// optimizer's moments do not build up behind the mask. Masks are buffers of this module
/// ("<layer>.weight" with '.' → '_'), so a checkpoint of it restores them.
///
/// A pruned head leaves its q, k, v rows and o_proj columns zero: its keys and queries are zero, its
/// attention is uniform and its values are zero, so it adds nothing to the output.
///
/// Throws kd::Error: kConfig for an invalid pattern or when no layer is left to prune (naming the
/// layers seen); kValue for a sparsity outside [0, 1).
///
/// Example:
/// ```
/// auto pruning = kd::prune::prepare(student.ptr(), kd::prune::Options().granularity(kd::prune::Granularity::kChannel)
///                                                      .exclude({"fc"}));
/// pruning->update(0.5);   // half of every layer's output channels
/// pruning->apply();
/// ```
class PruningImpl : public torch::nn::Module {
 public:
  PruningImpl(std::shared_ptr<torch::nn::Module> model, Options options = {});
  /// Recomputes the masks for target sparsity `sparsity` (never restoring a pruned unit) and records it.
  void update(double sparsity);
  /// W ← W ⊙ mask (and biases of pruned channels ← 0), without autograd.
  void apply();
  /// Registers gradient hooks that multiply each covered parameter's gradient by its mask (the same
  /// mask tensors update() refreshes); remove_gradient_masks() takes them off.
  void mask_gradients();
  void remove_gradient_masks();
  /// The target sparsity of the last update() (a buffer, so checkpoints keep it).
  double target_sparsity() const;
  Report report() const;
  const Options& options() const { return options_; }

 private:
  struct Site;
  Options options_;
  std::shared_ptr<torch::nn::Module> model_;
  std::vector<std::shared_ptr<Site>> sites_;
  torch::Tensor target_;
};
TORCH_MODULE(Pruning);

/// Prepares `model` for pruning (see PruningImpl); nothing is pruned until update().
Pruning prepare(std::shared_ptr<torch::nn::Module> model, Options options = {});

/// The sparsity at `progress` ∈ [0, 1] of a stage pruning from `start` to `end`, Zhu & Gupta's cubic
/// schedule: end + (start − end)·(1 − progress)³ (fast at first, then gently to `end`).
double cubic_sparsity(double start, double end, double progress);

}  // namespace kd::prune
