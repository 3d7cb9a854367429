#pragma once
/// \file
/// An in-memory dataset of (input, target) pairs and a seeded batch iterator.

#include <cstdint>
#include <vector>

#include <torch/types.h>

namespace kd::data {

/// Inputs [N, ...] and targets [N] (or [N, ...]) held in memory, and for padded
/// sequences a mask [N, L] (1 = real token, 0 = padding; undefined = all real)
/// that the trainer hands to the losses as DistillBatch::mask.
struct TensorDataset {
  torch::Tensor inputs;
  torch::Tensor targets;
  torch::Tensor mask;

  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
  /// The examples at `indices` (int64 [n]).
  TensorDataset select(const torch::Tensor& indices) const;
};

/// The example order for one epoch: a Fisher–Yates shuffle seeded by
/// (seed, epoch), identical on every platform and LibTorch version, or
/// 0..n−1 when `shuffle` is false.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle = true);

/// A copy of `dataset` in which only round(fraction·N) examples, drawn at random with `seed`,
/// keep their targets; the others' targets become `ignore_index`, which kd::HardLabelCE skips
/// (the inputs stay, so soft-target terms still see every example). For distilling with fewer
/// labels than the teacher saw: the labelled examples are the first of permutation(N, seed).
/// Targets must be [N] integer class indices; kd::Error (kValue) otherwise, or for a fraction
/// outside (0, 1].
///
/// Example: `auto few = kd::data::keep_labels(train, 0.1, /*seed=*/0);   // 10 % labelled`
TensorDataset keep_labels(const TensorDataset& dataset, double fraction, uint64_t seed, int64_t ignore_index = -100);

/// A deterministic random permutation of 0..n−1 (std::mt19937_64, Fisher–Yates).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

}  // namespace kd::data
