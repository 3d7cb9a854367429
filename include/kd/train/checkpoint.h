#pragma once
/// \file
/// Checkpoints that survive crashes: atomic, checksummed, the last k kept.

#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "kd/train/ema.h"

namespace kd {

/// Where training stands, saved with the weights so a resume continues exactly.
struct TrainingState {
  int64_t global_step = 0;
  int64_t stage_index = 0;
  int64_t stage_step = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;       ///< data position: batches of `epoch` already consumed
  double lr_scale = 1.0;            ///< what non-finite steps left of the configured learning rates
  int64_t nonfinite_steps = 0;      ///< steps dropped for a NaN/Inf loss or gradient so far
  int64_t rollbacks = 0;            ///< returns to an earlier checkpoint after non-finite steps
  std::string config_fingerprint;   ///< refuses a resume under a different configuration
  /// One per stage when the run's fingerprint leaves the stages out: a resume may then change the
  /// stages the checkpoint has not begun (StagedTrainerOptions::stage_fingerprints).
  std::vector<std::string> stage_fingerprints;
};

/// What one checkpoint holds; null pointers are skipped on save and on load.
struct CheckpointContents {
  torch::nn::Module* student = nullptr;
  torch::nn::Module* loss = nullptr;            ///< loss-owned parameters (projections, learned weights)
  torch::optim::Optimizer* optimizer = nullptr;
  Ema* ema = nullptr;                           ///< EMA shadow weights, when EMA is on
};

/// Options for CheckpointManager.
struct CheckpointOptions {
  explicit CheckpointOptions(std::string dir) : dir_(std::move(dir)) {}
  TORCH_ARG(std::string, dir);
  /// Checkpoints kept; older ones are deleted after a newer one is safely on disk.
  TORCH_ARG(int64_t, keep_last) = 3;
};

/// Writes and finds checkpoints in one folder.
///
/// A checkpoint is one file `ckpt-<step, 10 digits>-<crc32 hex>.pt`, written with
/// kd::write_atomically (temporary file, fsync, rename). Its CRC-32 is in its
/// name, so the file and its checksum appear together or not at all. It holds
/// the student, the loss's parameters, the optimizer state, the CPU RNG state
/// (and each CUDA device's, when CUDA is available) and the TrainingState.
/// Leftovers of a save that a crash interrupted (`.staging-*` files, never
/// valid checkpoints) are removed when a manager opens the folder.
///
/// Example:
/// ```
/// kd::CheckpointManager ckpt(kd::CheckpointOptions("runs/x/checkpoints").keep_last(3));
/// ckpt.save(state, {student.get(), loss.get(), &optimizer});
/// if (auto path = ckpt.latest()) state = ckpt.load(*path, {student.get(), loss.get(), &optimizer}, fingerprint);
/// ```
class CheckpointManager {
 public:
  explicit CheckpointManager(CheckpointOptions options);

  /// Saves and returns the new file's path; then prunes to keep_last files.
  std::string save(const TrainingState& state, const CheckpointContents& contents);

  /// Checkpoint files in the folder, oldest first (by step).
  std::vector<std::string> list() const;
  /// The newest checkpoint, if any.
  std::optional<std::string> latest() const;

  /// Verifies the checksum and restores `contents` and the RNG state. Throws
  /// kd::Error (kFormat) for a truncated or corrupted file, naming it and the
  /// previous checkpoint to use instead; (kConfig) when `expected_fingerprint`
  /// is non-empty and differs from the saved one.
  TrainingState load(const std::string& path, const CheckpointContents& contents,
                     const std::string& expected_fingerprint = "") const;

  /// The TrainingState of the checkpoint at `path` (checksum verified as by load), restoring nothing:
  /// to decide whether a run may resume from it before anything of the run changes.
  TrainingState read_state(const std::string& path) const;

  const CheckpointOptions& options() const { return options_; }

 private:
  std::optional<std::string> previous_of(const std::string& path) const;
  /// load's work; `contents` null reads the state only (no weights, no generators).
  TrainingState read(const std::string& path, const CheckpointContents* contents,
                     const std::string& expected_fingerprint) const;
  CheckpointOptions options_;
};

}  // namespace kd
