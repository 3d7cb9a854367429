#pragma once
/// \file
/// LibTorch archives written to disk atomically, with a full disk reported as an error, not an abort,
/// and checked entry by entry before LibTorch parses them.

#include <optional>
#include <string>

#include <torch/serialize/output-archive.h>

namespace kd {

/// Serialises `archive` in memory, then writes it to `path` with kd::write_bytes_atomically.
///
/// Why not `archive.save_to(path)`: LibTorch's file writer finishes the zip in its destructor, and a
/// write that fails there (disk full) throws from a destructor during unwinding, which terminates the
/// process. In memory nothing can fail but allocation; the disk write is then ours and checked.
///
/// Example: `kd::save_archive_atomically(archive, "runs/x/student.pt");`
void save_archive_atomically(torch::serialize::OutputArchive& archive, const std::string& path);

/// What is wrong with the zip archive at `path` (a LibTorch archive, a TorchScript file, a kdistill
/// checkpoint), or nothing when every entry's bytes match the CRC-32 its central directory records.
///
/// Why: LibTorch's zip reader skips these checks (its miniz is built with
/// MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS), and a damaged `code/` entry reaches its TorchScript parser,
/// which can crash the process instead of raising (tests/fuzz/corpus/checkpoint/damaged-code-entry.pt
/// once did). Every loader in kdistill calls this first and turns the answer into a kd::Error that
/// names the file and the entry.
/// Handles stored and deflated entries and zip64 sizes; reads the file in 1 MiB pieces.
///
/// Example:
///   if (auto damage = kd::find_archive_damage(path))
///     throw kd::Error(kd::ErrorCategory::kFormat, "'" + path + "' is damaged: " + *damage);
std::optional<std::string> find_archive_damage(const std::string& path);

}  // namespace kd
