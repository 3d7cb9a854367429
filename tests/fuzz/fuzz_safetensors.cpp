// libFuzzer target: the safetensors reader. Every input is either parsed into tensors that fit in the bytes
// they came from, or rejected with kd::Error; anything else (another exception, a crash, a sanitizer report)
// is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/safetensors.h"

namespace {

// The fewest bytes an element of this type can take in the file: U16 is read as int32 and U32 as int64.
size_t min_file_bytes(torch::ScalarType type) {
  if (type == torch::kInt32) return 2;
  if (type == torch::kInt64) return 4;
  return c10::elementSize(type);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = kd::data::parse_safetensors(data, size, "fuzz input");
    // What was accepted must be consistent: dense CPU tensors whose file bytes, together, fit in the input
    // (the tensors do not overlap), and BOOL bytes that are 0 or 1.
    size_t total = 0;
    for (const auto& [name, t] : file.tensors) {
      if (!t.defined() || !t.is_contiguous() || t.device() != torch::kCPU) __builtin_trap();
      const size_t bytes = static_cast<size_t>(t.numel()) * min_file_bytes(t.scalar_type());
      if (bytes > size || static_cast<size_t>(t.numel()) > size) __builtin_trap();
      total += bytes;
      if (total > size) __builtin_trap();
      if (t.scalar_type() == torch::kBool && t.numel() > 0 &&
          t.view(torch::kUInt8).gt(1).any().item<bool>()) {
        __builtin_trap();
      }
    }
  } catch (const kd::Error&) {
  }
  return 0;
}
