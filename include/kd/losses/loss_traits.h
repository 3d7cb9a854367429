#pragma once
/// \file
/// Optional capabilities a loss module can declare to whoever runs it.

#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "kd/losses/distill_batch.h"

namespace kd {

/// A loss that differentiates with respect to the models' inputs (R1 gradient
/// matching) implements this interface, so a trainer — or a WeightedSum that
/// contains it — knows to make `batch.inputs` require grad and to run the
/// teacher with input gradients.
///
/// Detection is a `dynamic_cast` on the module (see kd::needs_input_grad), so
/// it works through type erasure (`torch::nn::AnyModule`, kd::AnyLoss).
///
/// Example:
/// ```
/// class MyR1Impl : public torch::nn::Cloneable<MyR1Impl>, public kd::NeedsInputGrad {
///  public:
///   bool needs_input_grad() const override { return true; }
///   ...
/// };
/// ```
class NeedsInputGrad {
 public:
  virtual ~NeedsInputGrad() = default;
  /// True when the next forward needs input gradients.
  virtual bool needs_input_grad() const = 0;
};

/// Whether `module` declares (through kd::NeedsInputGrad) that it needs input gradients.
///
/// Example: `if (kd::needs_input_grad(*stage.loss().ptr())) batch.inputs.requires_grad_(true);`
inline bool needs_input_grad(const torch::nn::Module& module) {
  const auto* traits = dynamic_cast<const NeedsInputGrad*>(&module);
  return traits != nullptr && traits->needs_input_grad();
}

/// One layer pair's features as a loss compares them: the same shape, detached.
struct AlignedFeatures {
  torch::Tensor student;      ///< student features after the loss's projection and normalisation
  torch::Tensor teacher;      ///< teacher features, the student's shape
  int64_t teacher_layer = 0;  ///< the resolved (0-based) teacher layer index
};

/// A loss over layer pairs that can show a weighting policy the features it
/// compares, so kd::LayerSimilarityPolicy can weigh its term in a
/// kd::WeightedSum by their cosine similarity and layer. kd::FeatureL2
/// implements it. Detected by `dynamic_cast`, like kd::NeedsInputGrad.
///
/// Example:
/// ```
/// if (auto* src = dynamic_cast<kd::LayerFeatureSource*>(term.loss.ptr().get())) {
///   for (const auto& f : src->aligned_features(batch)) use(f.student, f.teacher, f.teacher_layer);
/// }
/// ```
class LayerFeatureSource {
 public:
  virtual ~LayerFeatureSource() = default;
  /// The features of each of the loss's pairs for `batch`, computed without
  /// gradients, in pair order; padded positions (a [B, L] `batch.mask`) are zero
  /// on both sides. Throws what the loss's forward would for a bad batch.
  virtual std::vector<AlignedFeatures> aligned_features(const DistillBatch& batch) = 0;
};

}  // namespace kd
