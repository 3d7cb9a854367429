#pragma once
/// \file
/// Exponential moving average of a model's weights.

#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/serialize/archive.h>

namespace kd {

/// Keeps shadow copies of a module's parameters, updated after each optimizer step:
///
///   shadow ← decay · shadow + (1 − decay) · θ
///
/// Buffers (e.g. BatchNorm running statistics) are copied, not averaged.
/// With `warmup` on, the decay used at update n (1-based) is
/// min(decay, (1 + n) / (10 + n)), so early shadows follow the model closely.
///
/// Example:
/// ```
/// kd::Ema ema(*student, 0.999);
/// for (...) { optimizer.step(); ema.update(*student); }
/// ema.copy_to(*eval_copy);   // evaluate on the averaged weights
/// ```
class Ema {
 public:
  Ema(const torch::nn::Module& model, double decay, bool warmup = false);

  void update(const torch::nn::Module& model);
  /// Writes the shadow weights (and buffers) into `model`, which must have the same structure.
  void copy_to(torch::nn::Module& model) const;

  /// The shadow state, for checkpoints (kd::CheckpointManager does this).
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

  double decay() const { return decay_; }
  int64_t updates() const { return updates_; }
  /// The decay that the next update will use.
  double next_decay() const;
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<torch::Tensor>& shadow() const { return shadow_; }

 private:
  double decay_;
  bool warmup_;
  int64_t updates_ = 0;
  std::vector<std::string> names_;
  std::vector<torch::Tensor> shadow_;
  std::vector<std::string> buffer_names_;
  std::vector<torch::Tensor> buffers_;
};

}  // namespace kd
