#pragma once
/// \file
/// Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

#include <string>

#include <torch/types.h>

namespace kd::data {

/// Reads an IDX file (magic 0x0000080D: type code 0x08 = uint8, D dimensions,
/// big-endian uint32 sizes, then the data). Files ending in ".gz" are
/// decompressed with zlib. Returns a uint8 tensor of the stored shape.
///
/// Throws kd::Error: kFile when the file is missing or unreadable, kFormat
/// when the header or the data length is wrong (naming expected vs found).
///
/// Example: `auto labels = kd::data::read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");`
torch::Tensor read_idx(const std::string& path);

/// Parses IDX bytes already in memory; `source` names them in error messages.
torch::Tensor parse_idx(const std::string& bytes, const std::string& source);

}  // namespace kd::data
