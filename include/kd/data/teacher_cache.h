#pragma once
/// \file
/// Teacher-output cache: run the frozen teacher once, read its outputs from disk afterwards.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "kd/core/model_output.h"
#include "kd/core/teacher.h"
#include "kd/data/tensor_dataset.h"

namespace kd::dist {
class ProcessGroup;
}

namespace kd::data {

/// What the cache stores per example.
struct TeacherCacheOptions {
  /// Store only the k largest logits and their class indices (0 = all logits).
  /// Lookups then fill `extras["topk_logits"]` and `extras["topk_indices"]`
  /// instead of `logits` (see kd::TemperatureKL for the sparse-teacher rule).
  TORCH_ARG(int64_t, top_k) = 0;
  /// Indices into the teacher's hidden_states to store (negative from the end).
  TORCH_ARG(std::vector<int64_t>, hidden_states) = {};
  /// Indices into the teacher's attentions to store (negative from the end), for attention transfer.
  TORCH_ARG(std::vector<int64_t>, attentions) = {};
  /// Storage type of floating-point entries: float32, float16 or bfloat16.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  /// Examples per teacher forward while building.
  TORCH_ARG(int64_t, batch_size) = 256;
};

/// CRC-32 over a module's parameters and buffers (names, shapes, bytes): the teacher's identity.
uint32_t module_fingerprint(const torch::nn::Module& module);
/// CRC-32 over a dataset's inputs (shape and bytes): the data's identity.
uint32_t dataset_fingerprint(const TensorDataset& dataset);

/// A memory-mapped, read-only file of teacher outputs keyed by example index.
///
/// File layout: "KDTCACHE" magic, a text header (version, fingerprints of the
/// teacher and the data, what was stored — top_k, dtype, layers —, example
/// count, one line per entry: name, dtype, per-example shape), then each
/// entry's [N, ...] array contiguously, then a CRC-32 per chunk of examples of
/// each entry. open() checks every chunk, so a damaged payload (even one whose
/// values stay finite) is refused, naming the entry and the examples. Built with
/// kd::write_atomically, so a half-built cache never exists under the final
/// name. A cache built for
/// another teacher, other data or other options (a different top_k, dtype or
/// set of layers) is refused by open(), and rebuilt by open_or_build().
///
/// Example:
/// ```
/// auto cache = kd::data::TeacherCache::open_or_build("runs/x/teacher.cache", teacher, train, {});
/// kd::ModelOutput t = cache->lookup(batch_indices);   // no teacher forward
/// ```
class TeacherCache {
 public:
  ~TeacherCache();
  TeacherCache(const TeacherCache&) = delete;
  TeacherCache& operator=(const TeacherCache&) = delete;

  /// Runs `teacher` over `dataset` (in order, under no-grad) and writes `path`.
  ///
  /// With a process group, every rank calls it: each runs the teacher over its contiguous share of
  /// the batches (kd::dist::shard_range) and writes those rows to `path.part<rank>`; rank 0 copies
  /// them into the one file and renames it into place, and every rank returns once it is there, so
  /// N ranks build it in about 1/N of the time. The file is the same as one process's. `path` must
  /// be in a folder all ranks share.
  static void build(const std::string& path, Teacher& teacher, const TensorDataset& dataset,
                    const TeacherCacheOptions& options = {}, dist::ProcessGroup* group = nullptr);
  /// Opens `path`; kd::Error (kFormat) for a truncated, damaged or foreign file, and
  /// (kState) when it was written for another teacher or dataset, naming both
  /// fingerprints, or — when `expected` is given — with other options, naming both.
  static std::unique_ptr<TeacherCache> open(const std::string& path, uint32_t teacher_fingerprint,
                                            uint32_t data_fingerprint,
                                            const std::optional<TeacherCacheOptions>& expected = std::nullopt);
  /// open() if the file exists and matches; otherwise (missing or stale) build() first. With a
  /// process group the ranks agree (any rank that finds it missing or stale makes all rebuild it).
  static std::unique_ptr<TeacherCache> open_or_build(const std::string& path, Teacher& teacher,
                                                     const TensorDataset& dataset,
                                                     const TeacherCacheOptions& options = {},
                                                     dist::ProcessGroup* group = nullptr);

  /// The teacher's outputs for examples `indices` (int64 [B]), as float32 on the CPU.
  /// Stored hidden states and attention maps sit at their teacher positions; the
  /// others are undefined tensors.
  ModelOutput lookup(const torch::Tensor& indices) const;

  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  int64_t top_k() const { return top_k_; }
  int64_t bytes() const { return static_cast<int64_t>(length_); }

 private:
  struct Entry {
    std::string name;          // "logits", "topk_logits", "topk_indices", "hidden_states.<i>", "attentions.<i>"
    torch::Dtype dtype;
    std::vector<int64_t> shape;  // per example
    size_t offset = 0;           // from the file start
  };
  TeacherCache() = default;
  torch::Tensor entry_rows(const Entry& e, const torch::Tensor& indices) const;

  std::string path_;
  void* map_ = nullptr;
  size_t length_ = 0;
  int64_t size_ = 0;
  int64_t top_k_ = 0;
  int64_t layers_ = 0;            // the teacher's hidden_states count
  int64_t attention_layers_ = 0;  // the teacher's attentions count
  std::vector<Entry> entries_;
};

}  // namespace kd::data
