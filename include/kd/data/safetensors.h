#pragma once
/// \file
/// Reader and writer for Hugging Face's safetensors format (named tensors, no code, no pickle).

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include <torch/types.h>

namespace kd::data {

/// The tensors of a safetensors file by name (and its "__metadata__" strings).
struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads `path` through a read-only memory map (POSIX mmap); each tensor is copied out into memory it owns,
/// so nothing refers to the file once this returns.
///
/// The format (https://github.com/huggingface/safetensors):
///   - 8 bytes: N, a little-endian uint64, the length of the header;
///   - N bytes: a UTF-8 JSON object; each key names a tensor and maps to
///     `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}`, with the offsets counted from the
///     first byte after the header; an optional key "__metadata__" maps to an object of string -> string;
///   - the data buffer: each tensor's elements, row-major, little-endian, covering the buffer without holes
///     or overlaps (as the reference implementation demands).
///
/// Dtypes: BOOL, U8, I8, I16, I32, I64, F16, BF16, F32 and F64 give the LibTorch type of the same name
/// (kBool, kUInt8, kChar, kShort, kInt, kLong, kHalf, kBFloat16, kFloat, kDouble). LibTorch 1.13 has no
/// unsigned 16- or 32-bit type, so U16 is widened to kInt (int32) and U32 to kLong (int64), values unchanged.
/// U64 (no type holds it), F8_E4M3, F8_E5M2 and any other dtype are refused.
///
/// Throws kd::Error: kFile when `path` is missing or unreadable; kFormat when the file is not a valid
/// safetensors file: too short, a header length beyond the file or 100 MB, a header that is not a JSON
/// object, an entry with missing or mistyped fields, an unsupported dtype, a negative or overflowing shape,
/// data offsets that are reversed, beyond the buffer, of the wrong length for the shape, or that leave a
/// hole or overlap another tensor. The message names the file, the tensor and the fix.
///
/// Example:
/// ```
/// auto file = kd::data::read_safetensors("teacher.safetensors");
/// torch::Tensor w = file.tensors.at("fc.weight");
/// ```
SafetensorsFile read_safetensors(const std::string& path);

/// Parses the bytes of a whole safetensors file already in memory (see read_safetensors() for the format
/// and the errors); `source` names it in error messages. Used by the reader and the fuzzer.
///
/// Example: `auto f = kd::data::parse_safetensors(bytes.data(), bytes.size(), "download buffer");`
SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& source);

/// Writes `tensors` and `metadata` to `path` as a safetensors file that the reference implementation
/// (Python `safetensors.torch.load_file`) reads: each tensor as a contiguous little-endian CPU copy, names in
/// sorted order, data offsets back to back, the JSON header padded with spaces to a multiple of 8 bytes.
/// The file is written atomically (kd::write_atomically): a failure leaves an existing `path` untouched.
///
/// Supported dtypes: kBool, kUInt8, kChar, kShort, kInt, kLong, kHalf, kBFloat16, kFloat, kDouble. Tensors
/// on another device are copied to the CPU first.
///
/// Throws kd::Error: kValue for an undefined, non-strided (sparse, quantized) or unsupported-dtype tensor, a
/// tensor named "__metadata__", or a name or metadata string that is not valid UTF-8; kFile when the file
/// cannot be written.
///
/// Example:
/// ```
/// kd::data::write_safetensors("student.safetensors", {{"fc.weight", w}, {"fc.bias", b}}, {{"format", "pt"}});
/// ```
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kd::data
