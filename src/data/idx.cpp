#include "kd/data/idx.h"

#include <filesystem>

#include <fmt/format.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/core/error.h"

namespace kd::data {
namespace {

// gzread reads plain files transparently too, so one path serves both.
std::string read_all(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error(ErrorCategory::kFile, fmt::format("cannot open '{}'", path));
  std::string bytes;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) bytes.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string zmsg = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not a readable (gzip) file: {}", path, zmsg));
  }
  return bytes;
}

uint32_t be32(const std::string& b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 24) | (uint32_t(uint8_t(b[at + 1])) << 16) |
         (uint32_t(uint8_t(b[at + 2])) << 8) | uint32_t(uint8_t(b[at + 3]));
}

}  // namespace

torch::Tensor parse_idx(const std::string& bytes, const std::string& source) {
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not an IDX file: it must start with two zero bytes", source));
  }
  if (uint8_t(bytes[2]) != 0x08) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': IDX type code 0x{:02x} is not supported (only 0x08, uint8)", source,
                            uint8_t(bytes[2])));
  }
  const size_t dims = uint8_t(bytes[3]);
  if (dims == 0 || dims > 4) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': IDX header declares {} dimensions; expected 1 to 4", source, dims));
  }
  const size_t header = 4 + 4 * dims;
  if (bytes.size() < header) {
    throw Error(ErrorCategory::kFormat, fmt::format("'{}': truncated IDX header", source));
  }
  std::vector<int64_t> shape;
  uint64_t count = 1;
  for (size_t d = 0; d < dims; ++d) {
    const uint32_t size = be32(bytes, 4 + 4 * d);
    shape.push_back(size);
    count *= size;
    if (count > (uint64_t(1) << 34)) {
      throw Error(ErrorCategory::kFormat, fmt::format("'{}': IDX sizes are implausibly large", source));
    }
  }
  if (bytes.size() - header != count) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': IDX header promises {} bytes of data but the file holds {}; the file "
                            "is truncated or corrupt",
                            source, count, bytes.size() - header));
  }
  auto out = torch::empty(shape, torch::kUInt8);
  if (count > 0) std::memcpy(out.data_ptr<uint8_t>(), bytes.data() + header, count);  // null data_ptr when empty
  return out;
}

torch::Tensor read_idx(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("IDX file '{}' does not exist", path));
  }
  return parse_idx(read_all(path), path);
}

}  // namespace kd::data
