#pragma once
/// \file
/// The three benchmark workloads of issue 7 (W1 vision, W2 encoder, W3 causal LM), one training
/// step at a time, with per-phase timings. bench/python/kd_bench.py is the plain-PyTorch twin.

#include <cstdint>
#include <memory>
#include <string>

namespace kd::bench {

/// How the teacher side of a step runs (issue 7, item 3: each switch measured on its own).
struct BenchOptions {
  std::string workload = "w1";  ///< w1 | w2 | w3
  std::string mode = "online";  ///< online: teacher forward every step; cached: W1 teacher outputs from kd::data::TeacherCache
  bool inference_mode = true;   ///< teacher under c10::InferenceMode (else kd::Teacher's no-grad only)
  bool fold_bn = true;          ///< W1: BatchNorm folded into the convs of the frozen teacher
  bool channels_last = false;   ///< W1: frozen teacher in channels-last layout (needs fold_bn)
  bool mkldnn = true;           ///< W1: frozen teacher on oneDNN-blocked weights and MKL-DNN tensors (needs fold_bn)
  std::string kl = "fused";     ///< fused: kd's custom-autograd KL in one chunk; chunked: its default 64-row chunks; autograd: textbook log_softmax/kl_div
  int64_t pool_batches = 8;     ///< distinct synthetic batches, cycled (W1 cached: the cached "epoch")
  uint64_t seed = 0;
};

/// Seconds spent in each phase of the steps so far.
struct PhaseTimes {
  double teacher = 0, student = 0, loss = 0, backward = 0, optimizer = 0;
};

class Workload {
 public:
  virtual ~Workload() = default;
  virtual int64_t batch_size() const = 0;
  /// Analytic FLOPs of one step (see flops.h): teacher forward once (none when cached), student 3×.
  virtual double flops_per_step() const = 0;
  /// One optimizer step on batch `step` mod the pool; returns the loss (a float read at the end of the step).
  virtual double step(int64_t step, PhaseTimes& times) = 0;
  /// Seconds spent before the first step outside construction (W1 cached: building the cache = epoch 1).
  virtual double setup_seconds() const { return 0.0; }
};

/// Throws std::invalid_argument for an unknown workload / mode / kl value or a combination that does not exist.
std::unique_ptr<Workload> make_workload(const BenchOptions& options);

}  // namespace kd::bench
