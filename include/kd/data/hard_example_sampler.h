#pragma once
/// \file
/// Hard-example mining: sample more of what the teacher finds uncertain.

#include <cstdint>
#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

namespace kd::data {

/// Per-example predictive entropy of the teacher at temperature T:
///   H_i = −Σ_c p_ic · log p_ic,   p_i = softmax(z_i / T).
/// `logits` [N, C] → [N]. Uniform logits give log C; a confident teacher ≈ 0.
/// Sequences, `logits` [N, L, C]: each example's mean over its tokens, H_i = (1/|V_i|) Σ_{l∈V_i} H_il, where
/// V_i is every position, or those where `mask` [N, L] is nonzero (an example with none scores 0).
torch::Tensor predictive_entropy(const torch::Tensor& logits, double temperature = 1.0,
                                 const torch::Tensor& mask = {});

/// Per-example teacher/student disagreement: KL(p_t ‖ p_s) at temperature T, [N]; for sequences [N, L, C]
/// the mean over each example's tokens (those of `mask`, as predictive_entropy).
torch::Tensor disagreement(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                           double temperature = 1.0, const torch::Tensor& mask = {});

/// Options for HardExampleSampler.
struct HardExampleSamplerOptions {
  /// Fraction of each epoch drawn in proportion to hardness; the rest is a
  /// uniform pass over the data. 0 = plain shuffling, 1 = hardness only.
  TORCH_ARG(double, mix) = 0.5;
  /// Added to every score so that no example's probability is exactly zero.
  TORCH_ARG(double, floor) = 1e-3;
  TORCH_ARG(uint64_t, seed) = 0;
};

/// Builds each epoch's order of N example indices: round(mix·N) draws (with
/// replacement) where example i has probability (s_i + floor) / Σ_j (s_j + floor),
/// plus the first N − round(mix·N) examples of a uniform shuffle, all shuffled
/// together. Deterministic for (seed, epoch, scores) on every platform.
///
/// Example:
/// ```
/// kd::data::HardExampleSampler sampler(train.size(), kd::data::HardExampleSamplerOptions().mix(0.3));
/// sampler.set_scores(kd::data::predictive_entropy(teacher_logits_of_train_set));   // refresh each epoch
/// auto order = sampler.epoch_order(epoch);
/// ```
class HardExampleSampler {
 public:
  HardExampleSampler(int64_t size, HardExampleSamplerOptions options = {});

  /// Hardness scores [N], finite and ≥ 0 (kd::Error otherwise).
  void set_scores(const torch::Tensor& scores);
  /// The sampling probability of each example in the hardness-driven part, [N].
  torch::Tensor probabilities() const;
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  int64_t size() const { return size_; }

 private:
  int64_t size_;
  HardExampleSamplerOptions options_;
  std::vector<double> cumulative_;  // of (score + floor), normalised to end at 1
};

}  // namespace kd::data
