#include "run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "kd/core/error.h"
#include "run_context.h"

namespace kd::app {
namespace fs = std::filesystem;

namespace {

std::string read_holder(int fd) {
  char buffer[512];
  const ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  std::string line(buffer, n > 0 ? static_cast<size_t>(n) : 0);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\0')) line.pop_back();
  return line.empty() ? "a process that has not written its name yet" : line;
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "an unknown host";
  return name;
}

}  // namespace

RunFolderLock::RunFolderLock(const fs::path& folder) {
  ensure_output_folder(folder);  // created and writable, or the error that says why not
  const fs::path path = folder / kFileName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw Error(ErrorCategory::kFile, fmt::format("the output folder '{}' is not writable (its lock file {}: {}); choose "
                                                  "another --out or fix its permissions or free space",
                                                  folder.string(), kFileName, std::strerror(errno)));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? read_holder(fd_) : std::string();
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK) {
      throw Error(ErrorCategory::kState,
                  fmt::format("the run folder '{}' is in use by another kd-train ({}); wait for it to end or stop it "
                              "(Ctrl-C checkpoints it), or choose another --out",
                              folder.string(), holder));
    }
    throw Error(ErrorCategory::kFile, fmt::format("cannot lock '{}': {}", path.string(), std::strerror(err)));
  }
  // The holder's name, for the message a second kd-train prints; a shorter name leaves no tail behind.
  const std::string line = fmt::format("pid {} on host {} since {:%Y-%m-%d %H:%M:%S} UTC\n", ::getpid(), host_name(),
                                       fmt::gmtime(std::chrono::system_clock::to_time_t(std::chrono::system_clock::now())));
  const bool named = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, line.data(), line.size(), 0) == static_cast<ssize_t>(line.size());
  (void)named;  // best effort: unnamed, the lock holds all the same
}

RunFolderLock::~RunFolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

std::optional<RunFolderLock> lock_run_folder(const fs::path& folder) {
  const char* rank = std::getenv("RANK");
  if (rank && *rank && std::string(rank) != "0") return std::nullopt;
  return std::optional<RunFolderLock>(std::in_place, folder);
}

}  // namespace kd::app
