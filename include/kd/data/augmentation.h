#pragma once
/// \file
/// Training-time transforms of a batch, applied before the teacher and the student see it.

#include <cstdint>
#include <string>

#include <torch/arg.h>
#include <torch/types.h>

namespace kd::data {

/// A transform the trainer applies to every training micro-batch (never to evaluation data),
/// before the teacher, the student and the loss see it, so both models always see the same
/// inputs. Randomness must come from torch's default CPU generator: its state is in every
/// checkpoint, so a resumed run draws what an uninterrupted one would.
///
/// A stochastic augmentation changes the inputs every epoch, so teacher outputs cached for the
/// un-augmented inputs would be stale: kd::StagedTrainer refuses a teacher cache with one.
///
/// Example (your own):
/// ```
/// struct Noise : kd::data::Augmentation {
///   std::string name() const override { return "noise"; }
///   void apply(torch::Tensor& inputs, torch::Tensor& targets) override {
///     inputs = inputs + 0.05 * torch::randn_like(inputs);
///   }
/// };
/// ```
class Augmentation {
 public:
  virtual ~Augmentation() = default;
  virtual std::string name() const = 0;
  /// Transforms a batch in place: `inputs` [B, ...] and `targets` [B] (or [B, ...]). A mixing
  /// augmentation may replace class indices by soft targets [B, C] (kd::HardLabelCE takes both).
  virtual void apply(torch::Tensor& inputs, torch::Tensor& targets) = 0;
  /// The same with the batch's padding mask [B, L] (1 = real token; undefined for unpadded data),
  /// which the trainer passes: override it when the transform moves tokens (kd::data::TokenMix).
  /// By default the mask is left as it is.
  virtual void apply(torch::Tensor& inputs, torch::Tensor& targets, torch::Tensor& mask) { apply(inputs, targets); }
  /// True when the result differs from call to call (so cached teacher outputs go stale).
  virtual bool stochastic() const { return true; }
};

/// Options for RandomShiftFlip.
struct RandomShiftFlipOptions {
  /// Each image moves by a whole number of pixels drawn uniformly from [−max_shift, max_shift],
  /// independently along height and width; uncovered pixels are `fill`.
  TORCH_ARG(int64_t, max_shift) = 2;
  /// Probability that an image is mirrored left–right.
  TORCH_ARG(double, flip_probability) = 0.5;
  /// An empty pixel in the inputs' encoding: 0 for raw images, but normalised ones have their own
  /// (kd::data::kFashionMnistBlank for load_fashion_mnist's); 0 there would draw grey bars.
  TORCH_ARG(double, fill) = 0.0;
};

/// The classic image augmentation: a random translation (as "pad by s, crop at random" does) and a
/// random horizontal mirror, per image, on [B, C, H, W] inputs. Labels are unchanged.
///
///   m_b = in_b mirrored left–right if flipped_b, else in_b        (mirror first, then shift)
///   out[b, c, y, x] = m_b[c, y − dy_b, x − dx_b], or `fill` where that falls outside the image.
///
/// Example:
/// ```
/// auto aug = std::make_shared<kd::data::RandomShiftFlip>(kd::data::RandomShiftFlipOptions().max_shift(2));
/// kd::StagedTrainer trainer(student, teacher, stages, kd::StagedTrainerOptions().augmentation(aug));
/// ```
class RandomShiftFlip : public Augmentation {
 public:
  explicit RandomShiftFlip(RandomShiftFlipOptions options = {});
  std::string name() const override { return "random_shift_flip"; }
  using Augmentation::apply;
  void apply(torch::Tensor& inputs, torch::Tensor& targets) override;
  /// The deterministic core: shifts (dy, dx) [B] int64 and flips [B] bool given.
  torch::Tensor transform(const torch::Tensor& inputs, const torch::Tensor& dy, const torch::Tensor& dx,
                          const torch::Tensor& flip) const;
  const RandomShiftFlipOptions& options() const { return options_; }

 private:
  RandomShiftFlipOptions options_;
};

}  // namespace kd::data
