#include "kd/core/device.h"

#include <fmt/format.h>
#include <torch/cuda.h>

#include "kd/core/error.h"

namespace kd {

torch::Device resolve_device(const std::string& spec) {
  if (spec == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::kCPU;
  if (spec == "cpu") return torch::kCPU;
  if (spec.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      throw Error(ErrorCategory::kDevice,
                  fmt::format("device '{}' was requested but this LibTorch sees no CUDA device; "
                              "use --device cpu (or auto), or build against a CUDA LibTorch",
                              spec));
    }
    try {
      torch::Device device(spec);
      if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count())) {
        throw Error(ErrorCategory::kDevice,
                    fmt::format("device '{}' does not exist: {} CUDA device(s) visible", spec,
                                torch::cuda::device_count()));
      }
      return device;
    } catch (const c10::Error&) {
      // fall through to the generic message
    }
  }
  throw Error(ErrorCategory::kValue,
              fmt::format("unknown device '{}'; use cpu, cuda, cuda:N or auto", spec));
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return torch::kFloat32;
  if (name == "float64" || name == "fp64" || name == "double") return torch::kFloat64;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return torch::kFloat16;
  throw Error(ErrorCategory::kValue,
              fmt::format("unknown dtype '{}'; use float32, float64, bfloat16 or float16", name));
}

std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return std::string(c10::toString(dtype));
  }
}

}  // namespace kd
