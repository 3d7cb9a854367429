#pragma once
/// \file
/// Summing gradients over data-parallel ranks, in buckets.

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "kd/dist/process_group.h"

namespace kd::dist {

/// Sums the gradients of `params` over the ranks of `group`, in place, in buckets of about
/// `bucket_bytes` (one flat all-reduce per bucket, so many small tensors cost one round trip).
///
/// The trainer scales each rank's loss by its share of the step's examples (n_rank / N), so the
/// sum is the mean gradient over the whole global batch: g = Σ_r (n_r / N) ∇L_r.
///
/// Every rank must pass the same parameters in the same order. A parameter whose gradient is
/// undefined on some ranks (unused there, or no examples) gets zeros on those ranks; one that has
/// no gradient on any rank keeps it undefined, so the optimizer skips it as it would on one rank.
/// That agreement costs one small all-reduce of flags before the buckets.
///
/// Example: `loss.backward(); kd::dist::all_reduce_gradients(*group, model->parameters());`
void all_reduce_gradients(ProcessGroup& group, const std::vector<torch::Tensor>& params,
                          int64_t bucket_bytes = 25 << 20);

/// Overwrites `tensors` on every rank with rank 0's: the start of training (parameters) and every
/// step (buffers such as BatchNorm statistics, as PyTorch's DistributedDataParallel does).
void broadcast_from_main(ProcessGroup& group, std::vector<torch::Tensor> tensors);

}  // namespace kd::dist
