#pragma once
// Private to src/train: the order in which each epoch of a stage visits the training set.

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "kd/core/student.h"
#include "kd/core/teacher.h"
#include "kd/data/tensor_dataset.h"
#include "kd/train/staged_trainer.h"

namespace kd::detail {

/// A seeded shuffle per (stage, epoch), or with hard-example mining (StagedTrainerOptions::hard_example_mix) a
/// mix of a shuffle and a draw weighted by hardness: the teacher's predictive entropy (computed once), or the
/// student's disagreement with the teacher as the epoch begins. Those disagreement scores are kept in state(),
/// a module the trainer checkpoints, so a run resumed inside an epoch draws the order the epoch began with.
class ExampleOrder {
 public:
  ExampleOrder(const StagedTrainerOptions& options, const data::TensorDataset& train, Student student,
               std::optional<Teacher> teacher);

  /// The order of epoch `epoch` of stage `stage_index`. `restored`: the epoch began before a checkpoint that
  /// was just loaded, so its disagreement scores come from state() instead of the student.
  std::vector<int64_t> epoch(int64_t stage_index, int64_t epoch, bool restored);

  /// The disagreement scores of the current epoch, as a module's buffer; null unless hardness is kDisagreement.
  std::shared_ptr<torch::nn::Module> state() const { return state_; }

 private:
  /// Per-example hardness over the whole training set (the teacher's entropy, or the student's disagreement
  /// with the teacher or its cache), both models in eval mode, no grad; sequences score their tokens' mean.
  torch::Tensor scores(bool disagreement);

  const StagedTrainerOptions& o_;
  const data::TensorDataset& train_;
  Student student_;
  std::optional<Teacher> teacher_;
  torch::Tensor teacher_entropy_;  // per example, computed once
  std::shared_ptr<torch::nn::Module> state_;
};

}  // namespace kd::detail
