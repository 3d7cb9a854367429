#include "kd/io/atomic_file.h"
#include "kd/detail/file_sync.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <zlib.h>

#include "kd/core/error.h"

namespace kd {
namespace fs = std::filesystem;
namespace {

void fsync_path(const std::string& path, int flags, const std::string& what) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0 || ::fsync(fd) != 0) {
    const std::string cause = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw Error(ErrorCategory::kFile, fmt::format("cannot flush {} '{}' to disk: {}", what, path, cause));
  }
  ::close(fd);
}

}  // namespace

void write_bytes_atomically(const std::string& path, const std::string& bytes) {
  write_atomically(path, [&](const std::string& tmp) {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw Error(ErrorCategory::kFile, fmt::format("cannot create '{}': {}", tmp, std::strerror(errno)));
    const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
    const int flushed = std::fflush(f);
    const std::string cause = std::strerror(errno);
    std::fclose(f);
    if (written != bytes.size() || flushed != 0) {
      throw Error(ErrorCategory::kFile, fmt::format("cannot write '{}' ({} of {} bytes written): {}", path, written,
                                                    bytes.size(), cause));
    }
  });
}

void detail::fsync_directory(const std::string& path) { fsync_path(path, O_RDONLY | O_DIRECTORY, "folder"); }

void write_atomically(const std::string& path, const std::function<void(const std::string&)>& write) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) {
    throw Error(ErrorCategory::kFile,
                fmt::format("cannot write '{}': folder '{}' does not exist; create it first", path, dir.string()));
  }
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  try {
    write(tmp);
    if (!fs::exists(tmp)) {
      throw Error(ErrorCategory::kFile, fmt::format("writing '{}' produced no file", tmp));
    }
    fsync_path(tmp, O_RDONLY, "file");
    std::error_code ec;
    fs::rename(tmp, target, ec);
    if (ec) throw Error(ErrorCategory::kFile, fmt::format("cannot rename '{}' to '{}': {}", tmp, path, ec.message()));
    fsync_path(dir.string(), O_RDONLY | O_DIRECTORY, "folder");
  } catch (const Error&) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw Error(ErrorCategory::kFile, fmt::format("cannot write '{}': {}", path, e.what()));
  }
}

uint32_t detail::file_crc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCategory::kFile, fmt::format("cannot read '{}'", path));
  uLong crc = crc32(0L, Z_NULL, 0);
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf), static_cast<uInt>(in.gcount()));
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace kd
