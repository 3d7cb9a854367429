#include "kd/train/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace kd {
namespace {

// LibTorch 2.4 generalised the per-device calls (the old ones are deprecated there).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
at::DeviceType type_of(bool cuda) { return cuda ? at::kCUDA : at::kCPU; }
bool enabled(bool cuda) { return at::autocast::is_autocast_enabled(type_of(cuda)); }
void set_enabled(bool cuda, bool on) { at::autocast::set_autocast_enabled(type_of(cuda), on); }
at::ScalarType dtype(bool cuda) { return at::autocast::get_autocast_dtype(type_of(cuda)); }
void set_dtype(bool cuda, at::ScalarType t) { at::autocast::set_autocast_dtype(type_of(cuda), t); }
#else
bool enabled(bool cuda) { return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
void set_enabled(bool cuda, bool on) { cuda ? at::autocast::set_enabled(on) : at::autocast::set_cpu_enabled(on); }
at::ScalarType dtype(bool cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_dtype(bool cuda, at::ScalarType t) {
  cuda ? at::autocast::set_autocast_gpu_dtype(t) : at::autocast::set_autocast_cpu_dtype(t);
}
#endif

}  // namespace

AutocastGuard::AutocastGuard(torch::Device device, Precision precision) {
  if (precision == Precision::kFloat32) return;
  active_ = true;
  cuda_ = device.is_cuda();
  was_enabled_ = enabled(cuda_);
  previous_dtype_ = dtype(cuda_);
  set_dtype(cuda_, at::kBFloat16);
  set_enabled(cuda_, true);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  // Leaving the outermost region: the bf16 copies of the weights are stale after the next step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_enabled(cuda_, was_enabled_);
  set_dtype(cuda_, previous_dtype_);
}

}  // namespace kd
