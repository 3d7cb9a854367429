#pragma once
/// \file
/// Writing files so that a crash leaves either the old file or the new one, never half of one.

#include <cstdint>
#include <functional>
#include <string>

namespace kd {

/// Writes `path` atomically: `write(tmp_path)` fills a temporary file in the
/// same folder, which is then fsync'ed, renamed over `path`, and the folder
/// fsync'ed. If `write` throws or any step fails, the temporary file is removed,
/// an existing `path` is untouched, and kd::Error (kFile) names the path and the cause.
///
/// Example:
/// ```
/// kd::write_atomically("runs/x/student.pt", [&](const std::string& tmp) { torch::save(model, tmp); });
/// ```
void write_atomically(const std::string& path, const std::function<void(const std::string& tmp_path)>& write);

/// write_atomically() for bytes already in memory: written with checked writes, so a full disk or an I/O
/// error is a kd::Error (kFile) naming the path, with the old file untouched and no temporary left.
void write_bytes_atomically(const std::string& path, const std::string& bytes);

}  // namespace kd
