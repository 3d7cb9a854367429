#pragma once
/// \file
/// Next-token sampling for generative models: temperature and top-k, reproducible from a seed.

#include <cstdint>
#include <random>

#include <torch/arg.h>
#include <torch/types.h>

namespace kd::models {

/// How CausalLM::generate (and TokenSampler) pick each next token.
struct GenerateOptions {
  /// Softmax temperature T > 0; 0 = greedy (argmax, the lowest id among ties).
  TORCH_ARG(double, temperature) = 1.0;
  /// Sample among the k highest logits only (ties broken toward the lower id); 0 = the full distribution.
  TORCH_ARG(int64_t, top_k) = 0;
  /// Seed of the sampler's std::mt19937_64: the same seed, model and prompt give the same tokens.
  TORCH_ARG(uint64_t, seed) = 0;
};

/// Draws one token per row of logits [B, V] (or [V]):
///
///   p_i ∝ exp(z_i / T) for i among the top_k largest z (all V when top_k = 0 or ≥ V), 0 elsewhere,
///
/// by inverting the cumulative distribution (in float64, on the CPU) at u = (r >> 11)·2⁻⁵³, r the
/// next draw of a std::mt19937_64 seeded with `seed` — identical on every platform and device.
/// Rows use consecutive draws. kd::Error (kValue) for a negative or non-finite temperature, a
/// negative top_k, NaN logits, or a row whose logits are all −∞.
///
/// Example:
/// ```
/// kd::models::TokenSampler sampler(kd::models::GenerateOptions().temperature(0.8).top_k(40).seed(7));
/// torch::Tensor next = sampler.sample(logits.select(1, -1));   // [B] int64
/// ```
class TokenSampler {
 public:
  explicit TokenSampler(GenerateOptions options = {});
  /// One int64 token id per row: [B] for [B, V] logits, a 0-dim tensor for [V].
  torch::Tensor sample(const torch::Tensor& logits);

  const GenerateOptions& options() const { return options_; }

 private:
  GenerateOptions options_;
  std::mt19937_64 rng_;
};

}  // namespace kd::models
