// libFuzzer target: the checkpoint reader. The input is written as a checkpoint file whose name carries
// the input's own CRC-32 (so the reader gets past the checksum to the archive inside) and loaded into a
// small model; it either restores or is refused with kd::Error. The model it was loaded into must be
// left usable either way. Past the name, the zip walk of kd::find_archive_damage is what most inputs
// meet: it stops a damaged entry before LibTorch's parser, which once crashed on one (the seed
// corpus/checkpoint/damaged-code-entry.pt).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/core/error.h"
#include "kd/train/checkpoint.h"

namespace {

struct Tiny : torch::nn::Module {
  Tiny() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
  torch::nn::Linear fc{nullptr};
};

const std::string& folder() {
  static const std::string dir = [] {
    const auto d = std::filesystem::temp_directory_path() / fmt::format("kd-fuzz-ckpt-{}", ::getpid());
    std::filesystem::create_directories(d);
    return d.string();
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint32_t crc = static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), data, static_cast<uInt>(size)));
  const std::string path = fmt::format("{}/ckpt-0000000001-{:08x}.pt", folder(), crc);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  Tiny model;
  try {
    kd::CheckpointManager manager{kd::CheckpointOptions(folder())};
    manager.load(path, {&model, nullptr, nullptr, nullptr});
  } catch (const kd::Error&) {
  }
  model.fc->forward(torch::zeros({1, 3}));
  std::filesystem::remove(path);
  return 0;
}
