#pragma once
/// \file
/// Summing gradients over data-parallel ranks, in buckets, while backward still runs.

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

#include "kd/dist/process_group.h"

namespace kd::dist {

struct GradientSyncOptions {
  /// The first bucket (the last layers' gradients, which backward produces first) is kept small
  /// so that its exchange starts early, as in PyTorch's DistributedDataParallel.
  TORCH_ARG(int64_t, first_bucket_bytes) = 1 << 20;
  /// The other buckets: fewer, larger exchanges.
  TORCH_ARG(int64_t, bucket_bytes) = 25 << 20;
};

/// Sums the gradients of `params` over the ranks of `group`, overlapping the exchange with
/// backward: the parameters are split into buckets in reverse order (backward's order), and a
/// bucket is sent (ProcessGroup::all_reduce_sum_async) as soon as the armed backward has produced
/// every gradient in it and the buckets before it have gone. finish() sends what is left, waits,
/// and writes the sums into each parameter's `.grad`.
///
/// The trainer back-propagates each rank's loss times its count c_r (LossResult::count: counted tokens, else
/// examples), sums the counts in finish()'s `extra` and divides the summed gradients by them, so the result is
/// the mean gradient over the whole global batch: g = Σ_r c_r ∇L_r / Σ_r c_r.
///
/// Gradient accumulation: only the step's last backward is armed; the earlier ones accumulate
/// locally, and the bucket takes the accumulated gradient (.grad before the last backward plus
/// its contribution). Every rank must pass the same parameters in the same order. A parameter
/// with no gradient on some ranks (unused there) contributes zeros there; one with no gradient
/// on any rank keeps it undefined, so the optimizer skips it as it would in one process. Buckets
/// leave in the same order on every rank, so one that holds a parameter without a gradient waits,
/// with the buckets after it, for finish().
///
/// Example (each rank):
/// ```
/// kd::dist::GradientSync sync(group, model->parameters());
/// sync.arm();
/// loss.backward();           // buckets leave while backward runs
/// std::vector<torch::Tensor> extra = {loss.detach().clone()};
/// sync.finish(extra);        // .grad and extra[0] now hold sums over the ranks
/// ```
class GradientSync {
 public:
  GradientSync(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> params,
               const GradientSyncOptions& options = {});
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  /// The next backward is the step's last: its gradients leave in buckets as they are ready.
  void arm();
  /// After the armed backward: sends the buckets not sent yet, sums `extra` (e.g. the loss and
  /// its parts) over the ranks in the same last exchange, waits for everything and writes the
  /// summed gradients into `.grad`.
  void finish(std::vector<torch::Tensor>& extra);

  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  /// How many buckets of the last armed backward were sent before that backward returned.
  int64_t buckets_sent_during_backward() const { return sent_during_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;
    size_t waiting = 0;  // gradients not yet produced by the armed backward
    std::unique_ptr<PendingCollective> pending;
  };
  void on_gradient(size_t i, const torch::Tensor& grad);
  void send_ready_buckets();
  void send(Bucket& bucket);

  std::shared_ptr<ProcessGroup> group_;
  std::vector<torch::Tensor> params_;
  std::vector<std::pair<size_t, unsigned>> hooks_;  // (parameter, hook handle)
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<torch::Tensor> local_;  // what each parameter sends, then its sum
  std::vector<char> produced_;        // the armed backward produced a gradient for it
  size_t next_bucket_ = 0;            // buckets leave in order, the same on every rank
  bool armed_ = false;
  int64_t sent_during_backward_ = 0;
};

/// Overwrites `tensors` on every rank with rank 0's: the start of training (parameters) and every
/// step (buffers such as BatchNorm statistics, as PyTorch's DistributedDataParallel does).
void broadcast_from_main(ProcessGroup& group, std::vector<torch::Tensor> tensors);

}  // namespace kd::dist
