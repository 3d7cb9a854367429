#pragma once
/// \file
/// Data-parallel ranks over c10d: the rendezvous (TCPStore) and the Gloo process group PyTorch
/// itself uses, behind a small interface that keeps c10d out of kdistill's public headers.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

namespace kd::dist {

/// Where a rank is and how to reach the others. The fields are the torchrun environment:
/// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (see options_from_environment()).
struct ProcessGroupOptions {
  TORCH_ARG(int64_t, rank) = 0;
  TORCH_ARG(int64_t, world_size) = 1;
  TORCH_ARG(int64_t, local_rank) = 0;
  /// Rank 0's address; rank 0 runs the TCPStore rendezvous server there.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int64_t, master_port) = 29500;
  /// Seconds to wait for the rendezvous and for any one collective operation: a rank that died
  /// makes the others fail within this (sooner when its sockets close, which is the usual case).
  TORCH_ARG(double, timeout_s) = 120.0;
};

/// True when WORLD_SIZE is set in the environment (torchrun, `kd-train --nproc N`).
bool environment_has_ranks();

/// ProcessGroupOptions from RANK, WORLD_SIZE, LOCAL_RANK (default RANK), MASTER_ADDR (default
/// 127.0.0.1), MASTER_PORT (default 29500) and KD_DIST_TIMEOUT (seconds, default 120). Throws
/// kd::Error (kConfig) naming the variable when one is not a number or out of range
/// (RANK must be in [0, WORLD_SIZE)). ProcessGroup::create also reads GLOO_SOCKET_IFNAME: the network
/// interface this rank is reached at (default: loopback for a local job, else the host name's address).
ProcessGroupOptions options_from_environment();

/// A collective started by ProcessGroup::all_reduce_sum_async and not yet waited for.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  /// Blocks until the collective is done and writes its result into the tensors it was given;
  /// kd::Error (kDistributed) as ProcessGroup's blocking calls. Call it once.
  virtual void wait() = 0;
};

/// One rank of a data-parallel job. All collectives are blocking, run on CPU tensors through
/// Gloo (CUDA tensors are staged through host memory), and throw kd::Error (kDistributed) when
/// another rank died, timed out or disagreed, naming this rank and the operation.
///
/// Example (every rank runs the same program):
/// ```
/// auto group = kd::dist::ProcessGroup::create(kd::dist::options_from_environment());
/// std::vector<torch::Tensor> t = {torch::ones({3})};
/// group->all_reduce_sum(t);   // t[0] == world_size everywhere
/// ```
class ProcessGroup {
 public:
  /// Rendezvous with the other ranks: rank 0 listens on master_addr:master_port, the others connect
  /// there. Errors name the address and say what to do: a port already in use, an address that is
  /// not this machine's, a rank 0 that never came within timeout_s.
  static std::shared_ptr<ProcessGroup> create(const ProcessGroupOptions& options);
  ~ProcessGroup();

  int64_t rank() const { return options_.rank(); }
  int64_t world_size() const { return options_.world_size(); }
  /// Rank 0: the one that logs, writes checkpoints and metrics.
  bool is_main() const { return options_.rank() == 0; }
  const ProcessGroupOptions& options() const { return options_; }

  /// Element-wise sum over the ranks, in place; all tensors of one call in one coalesced operation
  /// when they share dtype and device.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors);
  /// all_reduce_sum that returns at once: the ranks exchange in the background (Gloo's own
  /// threads) while the caller goes on, e.g. with the rest of a backward pass. The tensors must
  /// stay alive and unchanged until wait(); every rank must start its collectives in the same order.
  std::unique_ptr<PendingCollective> all_reduce_sum_async(std::vector<torch::Tensor> tensors);
  /// Element-wise maximum over the ranks, in place.
  void all_reduce_max(std::vector<torch::Tensor>& tensors);
  /// Overwrites `tensors` on every rank with rank `root`'s (same shapes and dtypes on every rank).
  void broadcast(std::vector<torch::Tensor>& tensors, int64_t root = 0);
  /// Returns once every rank has called it; waits up to `timeout_s` (0: the group's timeout), e.g.
  /// longer while rank 0 alone builds a file the others then read.
  void barrier(double timeout_s = 0);

  /// Wall seconds spent inside collectives since creation (the communication share of a step);
  /// for an asynchronous one, the time its wait() blocked.
  double communication_seconds() const { return communication_s_; }

 private:
  struct Impl;
  friend struct PendingAllReduce;
  ProcessGroup(ProcessGroupOptions options, std::unique_ptr<Impl> impl);
  ProcessGroupOptions options_;
  std::unique_ptr<Impl> impl_;
  double communication_s_ = 0.0;
};

/// The part [begin, end) of `n` items that rank `rank` of `world_size` takes: contiguous, sizes
/// differing by at most one, earlier ranks taking the larger parts. For world_size 1: [0, n).
std::pair<int64_t, int64_t> shard_range(int64_t n, int64_t rank, int64_t world_size);

}  // namespace kd::dist
