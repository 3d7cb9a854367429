#pragma once
/// \file
/// Writing a QAT model as int8 weights + quantization parameters, and loading it back.

#include <cstdint>
#include <string>

#include <torch/nn/module.h>

#include "kd/quant/qat.h"

namespace kd::qat {

/// Sizes of an int8 file against the model's float32 state.
struct Int8Report {
  int64_t file_bytes = 0;       ///< size of the int8 file on disk
  int64_t float32_bytes = 0;    ///< 4 bytes × every floating-point parameter and buffer of the model
  int64_t weight_sites = 0;     ///< weights stored as int8
  int64_t int8_values = 0;      ///< their elements (one byte each in the file)
  int64_t activation_sites = 0; ///< activation points stored as (scale, zero point, range)
  int64_t float_tensors = 0;    ///< the float remainder: other parameters and buffers, float32
  /// file_bytes / float32_bytes.
  double ratio() const { return float32_bytes > 0 ? double(file_bytes) / double(float32_bytes) : 0.0; }
  /// "int8 file 270,912 bytes = 0.26 × float32 state 1,050,624 bytes (1 int8 weight, 262,144 values; 1
  /// activation point; 1 float tensor)"
  std::string to_string() const;
};

/// Writes `model`, prepared for QAT by `qat`, as an int8 file (atomically, kd::write_atomically):
/// - each quantized weight W₀ (per output channel or per tensor) as int8
///   q = clamp(round(W₀ / s) + z, q_min, q_max), with its float32 scales s, int32 zero points z and
///   [q_min, q_max] — the very integers the fake-quantized forward uses (round half to even, the
///   current W₀ with the quantizer's current s and z; observers are not run);
/// - each quantized activation point's scale, zero point, range and scheme;
/// - every other parameter and buffer (biases, excluded layers, normalisation statistics) as
///   float32 (integer buffers keep their dtype): the "float remainder".
/// The quantizers' own state (observer ranges, switches) is not written. The file is in the compact
/// int8 format of kd/quant/int8_file.h (version 2: a 40-byte header with magic, sizes and CRC-32, a
/// small index of names, shapes, dtypes, grids and offsets, then the int8 values, scales, non-zero
/// zero points and float remainder as contiguous blobs): for the default DepthwiseCnnStudent about
/// 0.28× its float32 state, for a Linear-heavy model close to 0.25×. Load it with load_int8(),
/// inspect it with read_int8_file().
///
/// Throws kd::Error: kValue when `qat` was prepared on another model; kState when a weight
/// quantizer has never observed its weight (call qat.refresh() once first) or a kd::nn::Linear
/// still has an active adapter (unmerged LoRA: merge it first); kFile when the file cannot be
/// written (naming it). An activation point that has observed nothing is written with
/// scale 1 and zero point 0 and a warning.
///
/// Example:
/// ```
/// qat->freeze_observers();
/// auto report = kd::qat::export_int8(*student, *qat, "runs/x/student.int8.pt");
/// spdlog::info("{}", report.to_string());
/// ```
Int8Report export_int8(torch::nn::Module& model, QATImpl& qat, const std::string& path);

/// Loads an int8 file written by export_int8() into a freshly constructed `model` of the same
/// architecture, for inference that reproduces the fake-quantized model:
/// - each quantized weight parameter is set to its dequantized values (q − z)·s (float32
///   arithmetic, bit-equal to the fake-quantized weight the QAT forward used), cast to the
///   parameter's dtype;
/// - each activation point (a kd::qat::FakeQuantize placeholder in `model`) is configured with the
///   stored range and scheme, given the stored scale and zero point, fake quant on, observer off;
/// - the float remainder is copied into the other parameters and buffers.
/// The model's Linear/Conv layers are ordinary float layers afterwards (no QAT object is needed).
/// Nothing is changed unless the whole file fits the model.
///
/// Throws kd::Error: kFile when `path` does not exist (naming it); kFormat when it is not a valid
/// int8 file of this version (read_int8_file(): wrong magic, truncated, another version, a CRC or
/// index error); kShape when the architecture differs: a tensor whose shape differs (naming it
/// and both shapes), a name in the file that the model lacks or one the model has that the
/// file lacks (naming it), or a site whose layer is not a Linear/Conv/FakeQuantize.
///
/// Example:
/// ```
/// auto student = std::make_shared<MyStudent>();          // same architecture, fresh weights
/// kd::qat::load_int8(*student, "runs/x/student.int8.pt");
/// student->eval(); auto logits = student->forward(x);
/// ```
Int8Report load_int8(torch::nn::Module& model, const std::string& path);

}  // namespace kd::qat
