#include "kd/core/generators_kept.h"

#include <mutex>

namespace kd {

GeneratorsKept::GeneratorsKept() {
  generators_.push_back(at::detail::getDefaultCPUGenerator());
  if (torch::cuda::is_available()) {
    for (int64_t d = 0; d < static_cast<int64_t>(torch::cuda::device_count()); ++d) {
      generators_.push_back(at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d))));
    }
  }
  for (auto& g : generators_) {
    std::lock_guard<std::mutex> lock(g.mutex());
    states_.push_back(g.get_state());
  }
}

GeneratorsKept::~GeneratorsKept() {
  for (size_t i = 0; i < generators_.size(); ++i) {
    std::lock_guard<std::mutex> lock(generators_[i].mutex());
    generators_[i].set_state(states_[i]);
  }
}

}  // namespace kd
