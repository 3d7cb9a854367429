#pragma once
/// \file
/// File-system steps behind atomic writes and checkpoint names. Internal: not part of the API (kd/kd.h leaves it
/// out); users write files with kd::write_atomically (kd/io/atomic_file.h).

#include <cstdint>
#include <string>

namespace kd::detail {

/// fsync()s a folder, so that a rename inside it survives a power cut; kd::Error (kFile) on failure.
void fsync_directory(const std::string& path);

/// CRC-32 (zlib's) of a file's bytes; kd::Error (kFile) if it cannot be read.
uint32_t file_crc32(const std::string& path);

}  // namespace kd::detail
