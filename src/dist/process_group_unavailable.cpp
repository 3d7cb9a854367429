// Built instead of process_group.cpp when CMake found no Gloo headers: one process needs no group,
// and create() says what is missing.
#include "kd/core/error.h"
#include "kd/dist/process_group.h"

namespace kd::dist {

struct ProcessGroup::Impl {};

ProcessGroup::~ProcessGroup() = default;

std::shared_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions&) {
  throw Error(ErrorCategory::kDistributed,
              "this kdistill was built without c10d Gloo, so it cannot join other ranks; install the Gloo headers "
              "(Debian: apt-get install libgloo-dev), reconfigure and rebuild");
}

// No ProcessGroup can exist in this build, so these are never reached.
void ProcessGroup::all_reduce_sum(std::vector<torch::Tensor>&) {}
std::unique_ptr<PendingCollective> ProcessGroup::all_reduce_sum_async(std::vector<torch::Tensor>) { return nullptr; }
void ProcessGroup::all_reduce_max(std::vector<torch::Tensor>&) {}
void ProcessGroup::broadcast(std::vector<torch::Tensor>&, int64_t) {}
void ProcessGroup::barrier(double) {}

}  // namespace kd::dist
