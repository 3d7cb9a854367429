#pragma once
/// \file
/// Mixing augmentations: CutMix for images, TokenMix (a span of another sequence) for token models.
/// Both turn class labels into soft targets mixed in the proportion of what each example contributes;
/// the teacher sees the mixed inputs too, so its outputs are the mixed inputs' (consistent teaching).

#include <cstdint>
#include <string>

#include <torch/arg.h>
#include <torch/types.h>

#include "kd/data/augmentation.h"

namespace kd::data {

/// Options for CutMix and TokenMix.
struct MixOptions {
  explicit MixOptions(int64_t num_classes = 0) : num_classes_(num_classes) {}
  /// Classes of the soft targets (> 0): targets [B] become [B, num_classes].
  TORCH_ARG(int64_t, num_classes);
  /// λ ~ Beta(alpha, alpha), the share of an example that stays its own (before rounding to pixels / tokens).
  TORCH_ARG(double, alpha) = 1.0;
  /// Probability that a batch is mixed; unmixed batches keep their class indices.
  TORCH_ARG(double, probability) = 1.0;
};

/// Soft targets of a mix: w·onehot(targets) + (1 − w)·onehot(targets[partner]), w [B] the share of each
/// example that stays its own. kd::Error (kValue) for targets outside [0, num_classes).
torch::Tensor mixed_targets(const torch::Tensor& targets, const torch::Tensor& partner, const torch::Tensor& own_share,
                            int64_t num_classes);

/// CutMix (Yun et al., 2019) on images [B, C, H, W]: each image takes a box from a partner image
/// (a random permutation of the batch), the same box for the whole batch:
///
///   λ ~ Beta(α, α);  box h·w with h = ⌊H·√(1−λ)⌋, w = ⌊W·√(1−λ)⌋ centred at a uniform pixel, clipped;
///   x_b[:, box] = x_{π(b)}[:, box];   y_b = (1 − a)·onehot(y_b) + a·onehot(y_{π(b)}),  a = |box| / (H·W)
///
/// so the targets mix in exactly the pixel ratio (after clipping). Draws come from torch's default
/// CPU generator (checkpointed, so resumes repeat them). kd::Error (kShape) for inputs that are not
/// [B, C, H, W] or targets that are not [B].
///
/// Example:
/// ```
/// auto cutmix = std::make_shared<kd::data::CutMix>(kd::data::MixOptions(10).alpha(1.0));
/// kd::StagedTrainer trainer(student, teacher, stages, kd::StagedTrainerOptions().augmentation(cutmix));
/// ```
class CutMix : public Augmentation {
 public:
  explicit CutMix(MixOptions options);
  std::string name() const override { return "cutmix"; }
  using Augmentation::apply;
  void apply(torch::Tensor& inputs, torch::Tensor& targets) override;
  /// The deterministic core: rows [y0, y1) × columns [x0, x1) of every image come from image partner[b];
  /// targets become soft. Returns the mixed share a = box area / (H·W).
  double mix(torch::Tensor& inputs, torch::Tensor& targets, const torch::Tensor& partner, int64_t y0, int64_t y1,
             int64_t x0, int64_t x1) const;
  const MixOptions& options() const { return options_; }

 private:
  MixOptions options_;
};

/// The token counterpart of CutMix, for classification over padded token sequences [B, L] with a
/// padding mask [B, L]: each sequence takes positions [p, p + s) from a partner sequence (tokens and
/// mask alike), s = round((1−λ)·L), p uniform in [0, L − s], λ ~ Beta(α, α). The targets mix by the
/// real tokens each side contributes to the result:
///
///   a_b = (real tokens of the partner inside the span) / (real tokens of the mixed sequence)
///   y_b = (1 − a_b)·onehot(y_b) + a_b·onehot(y_{π(b)})      (a_b = 0 for a row left with no real token)
///
/// Without a mask every token counts as real. kd::Error (kShape) for inputs that are not [B, L]
/// token ids or targets that are not [B] (language-model targets [B, L] cannot be mixed this way).
///
/// Example: `auto mix = std::make_shared<kd::data::TokenMix>(kd::data::MixOptions(2).alpha(0.4));`
class TokenMix : public Augmentation {
 public:
  explicit TokenMix(MixOptions options);
  std::string name() const override { return "token_mix"; }
  void apply(torch::Tensor& inputs, torch::Tensor& targets) override;
  void apply(torch::Tensor& inputs, torch::Tensor& targets, torch::Tensor& mask) override;
  /// The deterministic core: positions [start, start + length) of every sequence (and of `mask`, when
  /// defined) come from sequence partner[b]; targets become soft. Returns the mixed shares a [B].
  torch::Tensor mix(torch::Tensor& inputs, torch::Tensor& targets, torch::Tensor& mask, const torch::Tensor& partner,
                    int64_t start, int64_t length) const;
  const MixOptions& options() const { return options_; }

 private:
  MixOptions options_;
};

}  // namespace kd::data
