#pragma once
/// \file
/// The int8 file format: a compact, versioned, checksummed container of int8 weights with their
/// quantization parameters, activation points and the float remainder of a model.

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace kd::qat {

/// Version of the int8 file format that write_int8_file() writes and read_int8_file() reads.
/// (Version 1 was a LibTorch archive, about 1.7× larger for small models; it is not read.)
inline constexpr uint32_t kInt8FileVersion = 2;

/// One entry of an int8 file.
struct Int8Record {
  enum class Kind : uint8_t {
    kWeight = 1,      ///< a quantized Linear/Conv weight: `values` (int8 or uint8) + scale/zero point
    kActivation = 2,  ///< an activation point: scale/zero point and scheme, no values
    kTensor = 3,      ///< the float remainder: a parameter or buffer as it is (float32, or an integer/bool dtype)
  };
  Kind kind = Kind::kTensor;
  /// Weight: the layer ("features.0", its parameter is "<name>.weight"); activation: the
  /// kd::qat::FakeQuantize submodule; tensor: the parameter or buffer ("fc.bias").
  std::string name;
  /// Weight: q = clamp(round(W/s) + z, quant_min, quant_max) as kInt8 or kUInt8, W's shape.
  /// Tensor: the value (kFloat32, kInt8, kUInt8, kInt16, kInt32, kInt64 or kBool). Activation: undefined.
  torch::Tensor values;
  /// Weight and activation: scales, float32 [C] (C = 1 per tensor) and zero points, int32 [C].
  torch::Tensor scale, zero_point;
  int64_t quant_min = 0, quant_max = 0;
  /// The axis of `values` that scale/zero_point run along (per channel), or −1 (per tensor).
  int64_t axis = -1;
  /// Symmetric scheme (the zero points then follow from the grid); stored for activation points.
  bool symmetric = false;
};

/// Writes `records` to `path` atomically (kd::write_atomically): either the old file or the whole
/// new one. Layout, all integers little-endian:
///
///   header (40 bytes): magic "KDQINT8\n", u32 version (2), u32 record count, u64 index bytes I,
///                      u64 data bytes D, u32 CRC-32 (zlib) of everything after the header, u32 0
///   index (I bytes):   per record: u8 kind, u8 dtype, u16 name length + name (UTF-8),
///                      u8 ndim + u64 dims; weights and activations: i32 quant_min, i32 quant_max,
///                      i32 axis, u8 flags (1 symmetric, 2 zero points stored), u64 C, u64 scale
///                      offset, [u64 zero point offset]; weights and tensors: u64 values offset
///   padding to a multiple of 8, then the data (D bytes): every int8 weight's values, contiguous,
///   then the float32 scales, the int32 zero points (only those of records whose zero points are
///   not all 0, e.g. never for symmetric int8 weights), the float32 remainder, the integer
///   tensors; each blob aligned to its element size, offsets relative to the data's start.
///
/// Throws kd::Error: kValue for a record that does not fit the format (an unsupported dtype, a
/// scale that does not match its values along `axis`, an empty or repeated name), naming it; kFile
/// when the file cannot be written.
///
/// Example: `kd::qat::write_int8_file("net.int8.pt", {rec});   // usually via kd::qat::export_int8`
void write_int8_file(const std::string& path, const std::vector<Int8Record>& records);

/// Reads a file written by write_int8_file(), checking all of it before returning: size against
/// the header (truncated or with trailing bytes), magic, version, CRC-32, and every index entry
/// (kind, dtype, shape, axis, grid, blob bounds). Records come back in file order; zero points that
/// were not stored are zeros.
///
/// Throws kd::Error: kFile when `path` does not exist or cannot be read; kFormat for anything else,
/// naming the file, what is wrong and the fix (export it again with kd::qat::export_int8).
///
/// Example:
/// ```
/// for (const auto& r : kd::qat::read_int8_file("runs/x/student.int8.pt"))
///   if (r.kind == kd::qat::Int8Record::Kind::kWeight) std::cout << r.name << " " << r.values.sizes() << "\n";
/// ```
std::vector<Int8Record> read_int8_file(const std::string& path);

}  // namespace kd::qat
