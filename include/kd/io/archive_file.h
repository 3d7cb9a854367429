#pragma once
/// \file
/// LibTorch archives written to disk atomically, with a full disk reported as an error, not an abort,
/// and checked entry by entry before LibTorch parses them.

#include <optional>
#include <string>

#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>
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

/// The first tensor of `archive` that `module` could not take (walked as Module::load walks it, children
/// included), named `prefix` + its dotted path with the reason, or nothing.
///
/// Why: LibTorch's Module::load takes each tensor as it is read, without looking at it. A parameter
/// whose saved shape differs from the module's (a file written by another architecture: other widths,
/// other classes) is silently replaced by the file's, and the model fails later, at its first forward,
/// with a message that names neither the file nor the tensor. A damaged archive can hold a tensor whose
/// storage is smaller than its shape (fuzz_checkpoint found one with no data at all). Buffers may change
/// shape (QAT observers' buffers take theirs on first use), as Module::load allows; their storage is
/// still checked. Entries missing from the archive are not reported: Module::load names them.
///
/// Example:
///   torch::serialize::InputArchive archive;
///   archive.load_from(path);
///   if (auto why = kd::find_unloadable_entry(*model, archive))
///     throw kd::Error(kd::ErrorCategory::kFormat, "'" + path + "' does not fit the model: " + *why);
///   model->load(archive);
std::optional<std::string> find_unloadable_entry(const torch::nn::Module& module,
                                                 torch::serialize::InputArchive& archive,
                                                 const std::string& prefix = "");

}  // namespace kd
