#include "kd/dist/process_group.h"

#include <chrono>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::dist {
namespace {

using Clock = std::chrono::steady_clock;

std::string first_line(const std::string& s) {
  const auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

std::string describe(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return first_line(c->what_without_backtrace());
  return first_line(e.what());
}

// Tensors grouped by (dtype, device), so each group travels as one flat buffer.
std::map<std::pair<int, std::string>, std::vector<size_t>> group_by_kind(const std::vector<torch::Tensor>& tensors) {
  std::map<std::pair<int, std::string>, std::vector<size_t>> groups;
  for (size_t i = 0; i < tensors.size(); ++i) {
    groups[{static_cast<int>(tensors[i].scalar_type()), tensors[i].device().str()}].push_back(i);
  }
  return groups;
}

// c10d's work handle (c10d::ProcessGroup::Work in LibTorch 1.13, c10d::Work in 2.x).
using WorkPtr = decltype(std::declval<c10d::ProcessGroupGloo&>().allreduce(std::declval<std::vector<at::Tensor>&>()));

// One collective per kind of tensor (dtype, device), each over one flat CPU buffer.
struct FlatWork {
  WorkPtr work;
  std::vector<size_t> tensors;  // indices of the tensors in the buffer, in order
  torch::Tensor buffer;
};

// Flattens each kind of tensor into one CPU buffer and starts `op` on it.
template <typename Op>
std::vector<FlatWork> start_flat(const std::vector<torch::Tensor>& tensors, Op op) {
  std::vector<FlatWork> works;
  for (const auto& [kind, idx] : group_by_kind(tensors)) {
    std::vector<torch::Tensor> parts;
    for (size_t i : idx) parts.push_back(tensors[i].detach().reshape({-1}).cpu());
    std::vector<torch::Tensor> buffer = {torch::cat(parts)};
    auto work = op(buffer);
    works.push_back({work, idx, buffer[0]});
  }
  return works;
}

// Waits for each started collective and writes its buffer back into the tensors, in place.
void finish_flat(std::vector<torch::Tensor>& tensors, std::vector<FlatWork>& works) {
  torch::NoGradGuard no_grad;
  for (auto& w : works) {
    w.work->wait();
    int64_t offset = 0;
    for (size_t i : w.tensors) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(w.buffer.slice(0, offset, offset + n).view(tensors[i].sizes()));
      offset += n;
    }
  }
}

}  // namespace

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;

  // A blocking collective: start, wait, write back.
  template <typename Op>
  void flat(std::vector<torch::Tensor>& tensors, Op op) {
    auto works = start_flat(tensors, op);
    finish_flat(tensors, works);
  }
};

ProcessGroup::ProcessGroup(ProcessGroupOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

ProcessGroup::~ProcessGroup() = default;

std::shared_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions& o) {
  if (o.world_size() < 1 || o.rank() < 0 || o.rank() >= o.world_size()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("rank {} of world size {}: needs world_size >= 1 and 0 <= rank < world_size", o.rank(),
                            o.world_size()));
  }
  if (o.master_port() < 1 || o.master_port() > 65535 || !(o.timeout_s() > 0)) {
    throw Error(ErrorCategory::kConfig, fmt::format("MASTER_PORT {} must be in [1, 65535] and the timeout ({} s) > 0",
                                                    o.master_port(), o.timeout_s()));
  }
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s() * 1000));
  const std::string where = fmt::format("{}:{}", o.master_addr(), o.master_port());
  auto impl = std::make_unique<Impl>();
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(o.master_port());
  so.isServer = o.rank() == 0;
  so.numWorkers = static_cast<std::size_t>(o.world_size());
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    impl->store = c10::make_intrusive<c10d::TCPStore>(o.master_addr(), so);
  } catch (const std::exception& e) {
    if (o.rank() == 0) {
      throw Error(ErrorCategory::kDistributed,
                  fmt::format("rank 0 could not start the rendezvous at MASTER_ADDR:MASTER_PORT = {} ({}): the port is "
                              "in use, the address is not this machine's, or not all {} ranks connected within {} s; "
                              "choose a free MASTER_PORT and check that every rank was started",
                              where, describe(e), o.world_size(), o.timeout_s()));
    }
    throw Error(ErrorCategory::kDistributed,
                fmt::format("rank {} could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = {} within {} s ({}): "
                            "check MASTER_ADDR and MASTER_PORT and that rank 0 is running",
                            o.rank(), where, o.timeout_s(), describe(e)));
  }
  try {
    auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
    // The address the other ranks reach this one at: the interface GLOO_SOCKET_IFNAME names (as in
    // PyTorch), loopback for a local job, else the address this host's name resolves to.
    const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
    const bool local = o.master_addr() == "127.0.0.1" || o.master_addr() == "localhost";
    gloo->devices.push_back(interface && *interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                            : local                 ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                                    : c10d::ProcessGroupGloo::createDefaultDevice());
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, static_cast<int>(o.rank()),
                                                              static_cast<int>(o.world_size()), gloo);
  } catch (const std::exception& e) {
    const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
    throw Error(ErrorCategory::kDistributed,
                fmt::format("rank {} of {}: the Gloo process group over the rendezvous at {} failed ({}){}", o.rank(),
                            o.world_size(), where, describe(e),
                            interface && *interface
                                ? fmt::format("; check GLOO_SOCKET_IFNAME={} names a network interface of this machine",
                                              interface)
                                : std::string("; set GLOO_SOCKET_IFNAME to the network interface the ranks reach "
                                              "each other on")));
  }
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(o, std::move(impl)));
}

namespace {

template <typename Fn>
void collective(const ProcessGroupOptions& o, const char* what, double& seconds, Fn fn) {
  const auto start = Clock::now();
  try {
    fn();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCategory::kDistributed,
                fmt::format("rank {} of {}: {} with the other ranks failed ({}); another rank probably stopped or "
                            "died (its own log says why), or did not answer within {} s",
                            o.rank(), o.world_size(), what, describe(e), o.timeout_s()));
  }
  seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

void ProcessGroup::all_reduce_sum(std::vector<torch::Tensor>& tensors) {
  if (tensors.empty() || world_size() == 1) return;
  collective(options_, "all-reduce (sum)", communication_s_, [&] {
    impl_->flat(tensors, [&](std::vector<torch::Tensor>& b) { return impl_->group->allreduce(b); });
  });
}

struct PendingAllReduce : PendingCollective {
  PendingAllReduce(ProcessGroup& group, std::vector<torch::Tensor> tensors) : group(group), tensors(std::move(tensors)) {}
  void wait() override {
    collective(group.options_, "all-reduce (sum)", group.communication_s_, [&] { finish_flat(tensors, works); });
  }
  ProcessGroup& group;
  std::vector<torch::Tensor> tensors;
  std::vector<FlatWork> works;
};

std::unique_ptr<PendingCollective> ProcessGroup::all_reduce_sum_async(std::vector<torch::Tensor> tensors) {
  auto pending = std::make_unique<PendingAllReduce>(*this, std::move(tensors));
  if (pending->tensors.empty() || world_size() == 1) return pending;
  collective(options_, "all-reduce (sum)", communication_s_, [&] {
    pending->works = start_flat(pending->tensors, [&](std::vector<torch::Tensor>& b) { return impl_->group->allreduce(b); });
  });
  return pending;
}

void ProcessGroup::all_reduce_max(std::vector<torch::Tensor>& tensors) {
  if (tensors.empty() || world_size() == 1) return;
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::MAX;
  collective(options_, "all-reduce (max)", communication_s_, [&] {
    impl_->flat(tensors, [&](std::vector<torch::Tensor>& b) { return impl_->group->allreduce(b, opts); });
  });
}

void ProcessGroup::broadcast(std::vector<torch::Tensor>& tensors, int64_t root) {
  if (tensors.empty() || world_size() == 1) return;
  c10d::BroadcastOptions opts;
  opts.rootRank = static_cast<int>(root);
  collective(options_, "broadcast", communication_s_, [&] {
    impl_->flat(tensors, [&](std::vector<torch::Tensor>& b) { return impl_->group->broadcast(b, opts); });
  });
}

void ProcessGroup::barrier(double timeout_s) {
  if (world_size() == 1) return;
  c10d::BarrierOptions opts;
  if (timeout_s > 0) opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  collective(options_, "barrier", communication_s_, [&] { impl_->group->barrier(opts)->wait(); });
}

}  // namespace kd::dist
