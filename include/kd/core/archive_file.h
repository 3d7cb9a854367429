#pragma once
/// \file
/// LibTorch archives written to disk atomically, with a full disk reported as an error, not an abort.

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

}  // namespace kd
