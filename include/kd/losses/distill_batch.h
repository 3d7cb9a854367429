#pragma once
/// \file
/// What every loss module receives, and what it returns.

#include <map>
#include <optional>
#include <string>

#include <torch/types.h>

#include "kd/core/model_output.h"

namespace kd {

/// Where training stands when a loss is evaluated. Schedules read `progress`.
struct StepInfo {
  int64_t global_step = 0;   ///< optimizer steps since the run began
  int64_t stage_step = 0;    ///< optimizer steps since the current stage began
  int64_t stage_steps = 0;   ///< length of the current stage in steps (0 if unknown)
  int64_t epoch = 0;         ///< epoch within the run
  double progress = 0.0;     ///< stage_step / stage_steps, in [0, 1]
  /// True when StagedTrainer::check runs the loss once on two examples before training (no gradient is
  /// taken from it): a loss with side effects of its own (a probe, a counter) may skip them.
  bool sanity_check = false;
};

/// One batch as a loss sees it: both models' outputs and the data they came from.
///
/// `inputs` are the student's inputs; `teacher_inputs` the teacher's, when a
/// loss differentiates through the teacher (they are then a separate leaf
/// that requires grad). `mask` is 1 for real positions and 0 for padding
/// ([B] or [B, L]); undefined means "all real".
struct DistillBatch {
  ModelOutput student;
  ModelOutput teacher;
  torch::Tensor targets;
  torch::Tensor mask;
  torch::Tensor inputs;
  torch::Tensor teacher_inputs;
  StepInfo step;
};

/// A loss value and its named parts, for logging.
///
/// `total` is the scalar to back-propagate; `parts` hold detached or live
/// scalars (name -> value), e.g. {"kl": ..., "ce": ..., "w.kl": ...}.
///
/// `count` is how many items `total` is the mean over (counted tokens, labelled examples), as marian's
/// RationalLoss keeps the sum and its count: the trainer weighs micro-batches and data-parallel ranks by it, so
/// that a step's loss is the mean over every counted item of the global batch whatever the padding of each
/// part. Unset: the batch's examples. Example: HardLabelCE over [B, L] targets with 37 of them not
/// ignore_index reports count 37.
struct LossResult {
  torch::Tensor total;
  std::map<std::string, torch::Tensor> parts;
  std::optional<double> count;
};

}  // namespace kd
