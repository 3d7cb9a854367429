#pragma once
// Private to src/train: one call of StagedTrainer::fit, split the way the loop reads.
//
//   fit:        restore (resume or rollback) -> stages -> finish; a rollback is a returned Outcome
//   run_stage:  prepare_stage (optimizer, schedule, teacher source, data order) -> steps
//   train_step: micro-batches -> forward/backward -> reduce -> NonFiniteGuard -> optimizer step
//   after_step: callbacks -> stage-end hooks -> stop request -> checkpoint -> evaluation

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "kd/train/checkpoint.h"
#include "kd/train/ema.h"
#include "kd/train/staged_trainer.h"
#include "example_order.h"
#include "nonfinite_guard.h"

namespace kd::detail {

class TeacherSource;

class FitRun {
 public:
  FitRun(StagedTrainer& trainer, const data::TensorDataset& train, const data::TensorDataset* validation);
  ~FitRun();

  TrainSummary fit(bool resume);

  /// What can be checked before the first step (StagedTrainer::check); changes nothing.
  void check();

 private:
  /// Stage by stage, the trainable patterns, and the loss on the first two training examples.
  void check_stages();
  /// Integer class targets of `data` lie in [0, classes) (or equal ignore_index); `what` names the set.
  void check_targets(const data::TensorDataset& data, int64_t classes, const char* what) const;

  /// How a stage, or the run of stages, ended.
  struct Outcome {
    enum Kind { kDone, kStopped, kRollback } kind = kDone;
    int stop_signal = 0;
  };
  struct StageRun;    // one stage's optimizer, schedule, teacher source, data order, step info
  struct StepResult;  // one optimizer step's reduced loss, gradient norm and what the guard decided

  /// Loads the newest checkpoint (a resume, or a rollback once fit has begun); its path, if there was one.
  std::optional<std::string> restore();
  /// Throws kd::Error (kConfig) when the checkpoint at `path` cannot be resumed under this configuration,
  /// saying which stage changed and what to do; logs the later stages that changed but had not begun.
  void check_resumable(const std::string& path);
  /// The checkpoint's "loss" entry: the losses of the stages `include` accepts, their hooks' state (named by
  /// first use) and the example order's scores.
  std::shared_ptr<torch::nn::Module> loss_entry(const std::function<bool(size_t)>& include) const;
  void begin_fit();
  Outcome run_stages(std::optional<std::string> resume_path);
  Outcome run_stage(int64_t stage_index, std::optional<std::string>& resume_path);
  std::unique_ptr<StageRun> prepare_stage(int64_t stage_index, std::optional<std::string>& resume_path);
  /// Where a stage's teacher outputs come from (null: nowhere, the student alone).
  std::unique_ptr<TeacherSource> teacher_source(bool input_grad);
  /// The step's micro-batches (rows of the training set), never spanning two epochs; `examples` their total.
  std::vector<torch::Tensor> next_micro_batches(StageRun& s, int64_t& examples);
  /// Forward and backward of every micro-batch; the step's loss and gradients are the means over every item the
  /// losses count (LossResult::count, else examples) in every micro-batch of every rank. The first micro-batch
  /// whose loss is not finite says in `diagnosis` which inputs or outputs hold NaN or Inf.
  LossResult forward_backward(StageRun& s, const std::vector<torch::Tensor>& micro, std::string& diagnosis);
  StepResult train_step(StageRun& s);
  /// Callbacks, stage-end hooks, checkpoint and evaluation after a step; the stop signal to obey (0: none).
  int after_step(StageRun& s, const StepResult& step);
  void save_checkpoint(StageRun& s, bool stage_done, int stop_signal);
  void evaluate_now(StageRun& s);
  /// The stop request of any rank, so that all ranks stop after the same step.
  int stop_requested();
  TrainSummary finish(int stop_signal);

  StagedTrainer& trainer_;
  const StagedTrainerOptions& o_;
  const data::TensorDataset& train_;
  const data::TensorDataset* validation_;
  int64_t n_ = 0;
  int64_t micro_per_epoch_ = 0;
  int64_t steps_per_epoch_ = 0;
  torch::Device device_;
  std::shared_ptr<Ema> ema_;  // handed to the trainer when fit() returns (StagedTrainer::ema)
  std::unique_ptr<CheckpointManager> ckpt_;
  std::unique_ptr<ExampleOrder> order_;
  // Every stage's loss, the hooks' state and the example order's scores: the checkpoint's "loss" entry.
  std::shared_ptr<torch::nn::Module> all_losses_;
  // What a resume restores of it: all_losses_, or only the unchanged stages' part after a change of stages.
  std::shared_ptr<torch::nn::Module> restored_losses_;
  dist::ProcessGroup* group_ = nullptr;            // null: one process
  bool is_main_ = true;
  std::vector<std::shared_ptr<Callback>> callbacks_;  // only rank 0 logs and writes metrics
  bool can_eval_ = false;
  NonFiniteGuard guard_;
  TrainSummary summary_;
  TrainingState state_;
  bool fit_began_ = false;
};

}  // namespace kd::detail
