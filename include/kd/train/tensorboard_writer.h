#pragma once
/// \file
/// TensorBoard event files: scalars in the TFRecord-framed `Event` protobufs TensorBoard reads.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace kd {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `size` bytes, as TFRecord frames use it.
///
/// Example: `kd::crc32c("123456789", 9) == 0xE3069283`
uint32_t crc32c(const void* data, size_t size);

/// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xA282EAD8, so a CRC of data holding CRCs stays useful.
uint32_t masked_crc32c(const void* data, size_t size);

/// Appends TensorBoard events to a new file `DIR/events.out.tfevents.<unix seconds>.<host>.<pid>`.
///
/// Each record is TFRecord-framed: the data length (uint64, little-endian), the masked CRC-32C of those 8
/// bytes, the data (a serialized `Event` protobuf: wall_time = 1, step = 2, file_version = 3, summary = 5,
/// session_log = 6), the masked CRC-32C of the data. The first record says "brain.Event:2". Records are
/// flushed as written, so `tensorboard --logdir DIR` shows a run while it trains and a crash loses at most
/// the record being written.
///
/// Example:
/// ```
/// kd::TensorBoardWriter tb("runs/x/tensorboard/student");
/// tb.add_scalars(12, {{"loss/total", 0.41}, {"train/lr", 1e-3}});
/// ```
class TensorBoardWriter {
 public:
  /// Creates `dir` when needed; kd::Error (kFile) naming it when it or the file cannot be created.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  /// One event at `step` holding a scalar per (tag, value); non-finite values are written as they are
  /// (TensorBoard shows NaN and Inf).
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  /// A SessionLog START at `step`: TensorBoard drops the events of this folder at steps >= `step` written
  /// before it, as a run resumed from a checkpoint does those steps again.
  void add_session_start(int64_t step);

  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kd
