#include "kd/core/model.h"

namespace kd {

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

int64_t parameter_bytes(const torch::nn::Module& module) {
  int64_t bytes = 0;
  for (const auto& p : module.parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  for (const auto& b : module.buffers()) bytes += b.numel() * static_cast<int64_t>(b.element_size());
  return bytes;
}

}  // namespace kd
