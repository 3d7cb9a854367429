#pragma once
// Test support: a tiny model, a learnable synthetic data set and a crash injector, shared by the
// trainer and hook tests.

#include <cstdint>
#include <stdexcept>

#include <torch/torch.h>

#include "kd/kd.h"

namespace kd::testing {

/// Linear(8, hidden) - tanh - Linear(hidden, 4), the tanh output as hidden_states[0].
/// No BatchNorm or dropout: micro-batching must not change the maths. The layers are kd::nn::Linear,
/// so LoRA attaches real adapters (with dropout if asked).
struct MlpImpl : kd::Model {
  explicit MlpImpl(int64_t hidden = 16);
  kd::ModelOutput forward(const torch::Tensor& x) override;
  kd::nn::Linear fc1{nullptr}, fc2{nullptr};
};

/// n examples x ~ N(0, 1)^8 labelled by argmax(x·W) for a random W [8, 4]: learnable by MlpImpl.
kd::data::TensorDataset synthetic(int64_t n, uint64_t seed);

/// A token model: Embedding(vocab, width) - tanh - Linear(width, vocab), logits [B, L, vocab] for ids [B, L], the
/// tanh output as hidden_states[0]. Each position on its own, so padding changes nothing but the counts.
struct TokenNetImpl : kd::Model {
  TokenNetImpl(int64_t vocab, int64_t width);
  kd::ModelOutput forward(const torch::Tensor& ids) override;
  torch::nn::Embedding embed{nullptr};
  kd::nn::Linear out{nullptr};
};

/// n sequences of `len` token ids below `vocab`, padded: sequence i has 1 + (i·7 mod len) real positions, so
/// shards and micro-batches hold very different numbers of tokens. Targets: the next id, −100 on padding (and on
/// each sequence's last position); mask 1 on real positions.
kd::data::TensorDataset padded_tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed);

/// Throws std::runtime_error("simulated crash") when the `at`-th optimizer step of the run ends,
/// before that step's checkpoint is written: a process killed there resumes from step at - 1.
struct CrashAt : kd::Callback {
  explicit CrashAt(int64_t at) : at(at) {}
  void on_step_end(const kd::StepReport& r) override {
    if (r.step.global_step + 1 == at) throw std::runtime_error("simulated crash");
  }
  int64_t at;
};

}  // namespace kd::testing
