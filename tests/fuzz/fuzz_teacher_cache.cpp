// libFuzzer target: the teacher-cache reader. The input is written as a cache file and opened with the
// fingerprints its own header claims (so the reader gets past that check); what opens is looked up at
// its first and last example. Every input is read or refused with kd::Error; anything else is a bug.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/teacher_cache.h"

namespace {

uint32_t claimed(const std::string& text, const char* key) {
  std::smatch m;
  const std::regex re(std::string("\n") + key + " ([0-9a-f]{1,8})\n");
  const std::string head = text.substr(0, 4096);
  return std::regex_search(head, m, re) ? static_cast<uint32_t>(std::stoul(m[1].str(), nullptr, 16)) : 0u;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      (std::filesystem::temp_directory_path() / fmt::format("kd-fuzz-cache-{}.cache", ::getpid())).string();
  const std::string text(reinterpret_cast<const char*>(data), size);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  try {
    auto cache = kd::data::TeacherCache::open(path, claimed(text, "teacher"), claimed(text, "data"));
    const auto out = cache->lookup(torch::tensor({int64_t{0}, cache->size() - 1}, torch::kLong));
    if (!out.logits.defined() && out.extras.empty() && out.hidden_states.empty() && out.attentions.empty()) {
      __builtin_trap();  // an opened cache always holds something
    }
  } catch (const kd::Error&) {
  }
  return 0;
}
