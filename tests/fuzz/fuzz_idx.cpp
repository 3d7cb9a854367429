// libFuzzer target: the IDX reader (Fashion-MNIST's format). Every input is either parsed into a tensor
// whose size matches its header, or rejected with kd::Error; anything else (another exception, a crash,
// a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto t = kd::data::parse_idx(bytes, "fuzz input");
    // What was accepted must be consistent: a uint8 tensor no larger than the bytes after the header.
    if (t.scalar_type() != torch::kUInt8 || static_cast<size_t>(t.numel()) > size) __builtin_trap();
  } catch (const kd::Error&) {
  }
  return 0;
}
