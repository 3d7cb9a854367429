#include "kd/train/tensorboard_writer.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "kd/core/error.h"
#include "tensorboard_event.pb.h"

namespace kd {
namespace {

std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const auto table = crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot create the TensorBoard folder '{}': {}; choose another one",
                                                  dir, ec ? ec.message() : "a file of that name is in the way"));
  }
  const std::string base =
      (std::filesystem::path(dir) /
       fmt::format("events.out.tfevents.{}.{}.{}", static_cast<int64_t>(now_seconds()), host_name(), getpid()))
          .string();
  // Never over an existing file ("x": exclusive): two writers in the same second get ".1", ".2", ...
  for (int n = 0; !file_ && n < 100; ++n) {
    path_ = n == 0 ? base : fmt::format("{}.{}", base, n);
    file_ = std::fopen(path_.c_str(), "wbx");
    if (!file_ && errno != EEXIST) break;
  }
  if (!file_) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot create the TensorBoard event file '{}': {}", path_,
                                                  std::strerror(errno)));
  }
  tensorboard::Event event;
  event.set_wall_time(now_seconds());
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  if (scalars.empty()) return;
  tensorboard::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  auto* summary = event.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    auto* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::add_session_start(int64_t step) {
  tensorboard::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  event.mutable_session_log()->set_status(tensorboard::SessionLog::START);
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& data) {
  std::string frame;
  put_le(frame, data.size(), 8);
  const uint32_t length_crc = masked_crc32c(frame.data(), 8);
  put_le(frame, length_crc, 4);
  frame += data;
  put_le(frame, masked_crc32c(data.data(), data.size()), 4);
  if (std::fwrite(frame.data(), 1, frame.size(), file_) != frame.size() || std::fflush(file_) != 0) {
    throw Error(ErrorCategory::kFile,
                fmt::format("cannot write to the TensorBoard event file '{}': {}", path_, std::strerror(errno)));
  }
}

}  // namespace kd
