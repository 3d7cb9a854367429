#pragma once
// One writer per run folder: an exclusive lock that kd-train holds for as long as it trains into OUT.

#include <filesystem>
#include <optional>

namespace kd::app {

/// An exclusive lock on a run folder, held from construction to destruction: `flock(2)` on
/// OUT/.kd-train.lock, a file that names the holder ("pid 4242 on host build-1 since 2026-12-06 22:31:55 UTC").
/// The kernel drops the lock when its process ends in any way, a crash or SIGKILL included, so the
/// file a dead run leaves behind never blocks a later `--resume`; the file itself stays.
///
/// A second kd-train into the same folder is refused (kd::Error, kState) with the holder's line:
/// ```
/// const RunFolderLock lock("runs/fm");  // throws while another kd-train trains into runs/fm
/// ```
/// Creates the folder if it does not exist (kFile error when it cannot).
class RunFolderLock {
 public:
  explicit RunFolderLock(const std::filesystem::path& folder);
  ~RunFolderLock();
  RunFolderLock(const RunFolderLock&) = delete;
  RunFolderLock& operator=(const RunFolderLock&) = delete;

  static constexpr const char* kFileName = ".kd-train.lock";

 private:
  int fd_ = -1;
};

/// The lock for the process that writes the run: every process but the ranks other than 0 of a
/// data-parallel job (RANK set and not 0), which only read the folder.
std::optional<RunFolderLock> lock_run_folder(const std::filesystem::path& folder);

}  // namespace kd::app
