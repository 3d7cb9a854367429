#pragma once
/// \file
/// The engine: an ordered list of stages, with checkpoints, EMA and metrics.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "kd/core/enum_names.h"
#include "kd/core/student.h"
#include "kd/core/teacher.h"
#include "kd/data/augmentation.h"
#include "kd/data/teacher_cache.h"
#include "kd/data/tensor_dataset.h"
#include "kd/dist/process_group.h"
#include "kd/train/adversarial.h"
#include "kd/train/autocast.h"
#include "kd/train/callback.h"
#include "kd/train/ema.h"
#include "kd/train/stage.h"

namespace kd {

namespace detail {
class FitRun;
}
enum class OptimizerKind { kAdamW, kSgd };
inline constexpr EnumNames<OptimizerKind, 2> kOptimizerKindNames{
    {{{OptimizerKind::kAdamW, "adamw"}, {OptimizerKind::kSgd, "sgd"}}}};

/// What makes an example "hard" for hard-example mining.
enum class Hardness {
  kTeacherEntropy,  ///< predictive entropy of the teacher (computed once per fit(): the teacher is frozen)
  kDisagreement,    ///< KL(teacher ‖ student), refreshed at the start of every epoch
};
inline constexpr EnumNames<Hardness, 2> kHardnessNames{
    {{{Hardness::kTeacherEntropy, "teacher_entropy"}, {Hardness::kDisagreement, "disagreement"}}}};

/// What the trainer does when a step's loss or global gradient norm is NaN or infinite. The
/// check runs every step (the norm is computed for clipping anyway); the step's update is never
/// applied, so the weights stay finite, and every such step is counted (TrainSummary,
/// StepReport, metrics.jsonl) and logged.
enum class NonFinitePolicy {
  kStop,      ///< throw kd::Error naming the step and the loss parts; checkpoints are left as they are
  kSkipStep,  ///< drop the update and go on with the next batch
  kLowerLr,   ///< drop the update and multiply every learning rate by lr_backoff from now on
  /// Reload the newest checkpoint (weights, optimizer, RNG, data position) and multiply the
  /// learning rates by lr_backoff; before the first checkpoint exists it acts as kLowerLr.
  kRollback,
};
inline constexpr EnumNames<NonFinitePolicy, 4> kNonFinitePolicyNames{{{{NonFinitePolicy::kSkipStep, "skip"},
                                                                       {NonFinitePolicy::kLowerLr, "lower_lr"},
                                                                       {NonFinitePolicy::kRollback, "rollback"},
                                                                       {NonFinitePolicy::kStop, "stop"}}}};

/// What an evaluation measures.
enum class EvalTask {
  kAuto,            ///< classification when num_classes > 0; language model when targets are [N, L]
  kClassification,  ///< accuracy, macro-F1, per-class F1 (needs num_classes > 0)
  kLanguageModel,   ///< next-token NLL, perplexity, bits per byte, token accuracy (kd::evaluate_language_model)
  kNone,
};

/// Options shared by all stages.
struct StagedTrainerOptions {
  TORCH_ARG(OptimizerKind, optimizer) = OptimizerKind::kAdamW;
  TORCH_ARG(double, weight_decay) = 1e-2;
  TORCH_ARG(double, momentum) = 0.9;        ///< SGD only
  TORCH_ARG(bool, nesterov) = false;        ///< SGD only
  TORCH_ARG(int64_t, batch_size) = 128;     ///< examples per micro-batch
  /// Forward passes (teacher, student, loss) in bf16 autocast on the student's
  /// device, weights and optimizer in float32 (see kd::AutocastGuard).
  TORCH_ARG(Precision, precision) = Precision::kFloat32;
  /// Micro-batches per optimizer step; each micro-batch's loss is divided by
  /// this, so the step's gradient is the mean over the accumulated examples.
  TORCH_ARG(int64_t, accumulation) = 1;
  /// Clip the global gradient L2 norm to this (0: no clipping).
  TORCH_ARG(double, clip_norm) = 1.0;
  /// Linear warmup steps at the start of each stage, then cosine to lr·min_lr_factor.
  TORCH_ARG(int64_t, warmup_steps) = 0;
  TORCH_ARG(double, min_lr_factor) = 0.0;
  /// EMA decay of the student's weights (0: off); evaluate on the EMA weights if eval_on_ema.
  TORCH_ARG(double, ema_decay) = 0.0;
  TORCH_ARG(bool, eval_on_ema) = false;
  /// Self-distillation: the teacher is the EMA of the student itself (needs
  /// ema_decay > 0 and no teacher or cache). Each micro-batch runs the student
  /// once with the EMA weights swapped in (eval mode, no grad) and once as itself.
  TORCH_ARG(bool, self_distillation) = false;
  /// Hard-example mining: this fraction of each epoch is drawn in proportion
  /// to hardness, the rest uniformly (0 = off; see data::HardExampleSampler).
  /// Needs a teacher or a cache with full logits. Resume is exact for both
  /// kinds of hardness: checkpoints keep the disagreement scores an epoch was
  /// drawn from.
  TORCH_ARG(double, hard_example_mix) = 0.0;
  TORCH_ARG(Hardness, hardness) = Hardness::kTeacherEntropy;
  TORCH_ARG(uint64_t, seed) = 0;
  /// Folder for checkpoints ("" = none); written every checkpoint_every steps and at each stage end.
  TORCH_ARG(std::string, checkpoint_dir) = "";
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  TORCH_ARG(int64_t, keep_last) = 3;
  /// Must equal the one in the checkpoint to resume from it (e.g. a hash of the config).
  TORCH_ARG(std::string, fingerprint) = "";
  /// One per stage, in order (e.g. a hash of each stage's config), when `fingerprint` covers everything
  /// else. A resume is then accepted when the stage the checkpoint is in (if it has begun) and every stage
  /// before it are unchanged: the later stages run as now defined, and stages may be added. Changing a
  /// finished stage, or the one a checkpoint is part-way through, is refused naming the stage (and the
  /// checkpoint at that stage's start when one is kept). Empty: the whole `fingerprint` decides.
  /// Example: a run killed in stage 2 of 3 resumes after its stage 3's temperature was changed.
  TORCH_ARG(std::vector<std::string>, stage_fingerprints) = {};
  TORCH_ARG(int64_t, num_classes) = 0;      ///< > 0 enables classification evaluation
  TORCH_ARG(EvalTask, eval_task) = EvalTask::kAuto;
  /// Language-model evaluation: targets equal to this are not scored (nor are masked positions).
  TORCH_ARG(int64_t, ignore_index) = -100;
  /// NaN / Inf loss or gradient: see NonFinitePolicy.
  TORCH_ARG(NonFinitePolicy, nonfinite) = NonFinitePolicy::kSkipStep;
  /// Factor applied to the learning rates by kLowerLr and kRollback, in (0, 1].
  TORCH_ARG(double, lr_backoff) = 0.5;
  /// This many non-finite steps in a row stop the run with kd::Error, whatever the policy.
  TORCH_ARG(int64_t, max_consecutive_nonfinite) = 5;
  /// Applied to every training micro-batch before the teacher and the student see it
  /// (kd::data::RandomShiftFlip or your own); refused with a teacher_cache when stochastic.
  TORCH_ARG(std::shared_ptr<data::Augmentation>, augmentation) = nullptr;
  /// Adversarial distillation (epsilon > 0): a share of every training micro-batch is replaced by
  /// FGSM / HotFlip examples made against the student (kd::adversarial_inputs), after the
  /// augmentation and the stage hooks' before_forward; the teacher and the student then both see
  /// them. Refused with a teacher_cache (the inputs change every step).
  TORCH_ARG(AdversarialOptions, adversarial) = {};
  /// Teacher outputs read from this cache (built over the same training set,
  /// in the same order) instead of running the teacher: no teacher forward at all.
  TORCH_ARG(std::shared_ptr<data::TeacherCache>, teacher_cache) = nullptr;
  /// Data-parallel training over these ranks (kd::dist::ProcessGroup; null: this process alone).
  /// batch_size stays the global micro-batch: each rank takes its shard of every micro-batch
  /// (kd::dist::shard_range), gradients are summed in buckets, so N ranks follow the same
  /// trajectory as one process with the same batch (up to float summation order; BatchNorm
  /// statistics are per rank and rank 0's are broadcast every step). Only rank 0 writes
  /// checkpoints and calls the callbacks; evaluation is sharded and its counts summed.
  TORCH_ARG(std::shared_ptr<dist::ProcessGroup>, process_group) = nullptr;
};

/// Runs `stages` in order over `train`: per micro-batch the frozen teacher (if
/// any) and the student run, the stage's loss gets both, gradients accumulate,
/// then (clip, schedule, step, EMA). Each stage builds a fresh optimizer over
/// its trainable student parameters and its loss's parameters; parameters
/// outside the stage's trainable set are frozen for that stage. A stage's hooks
/// (kd::StageHook: LoRA, QAT) run around it: they may freeze more of the student
/// and add their own parameters, and rewrite layer weights before each forward.
///
/// Stop: after every optimizer step (and the evaluation due at it) the trainer checks
/// kd::StopSignal; when a stop was requested (SIGINT/SIGTERM in a program that installed the
/// handlers) it writes a checkpoint and returns early with `stopped_by_signal` set, so no
/// finished step is lost. A request during a stage's last step stops after that stage's end.
///
/// Non-finite values: every step checks its loss and gradient norm; options().nonfinite says
/// whether to stop, skip the update, lower the learning rate or roll back (NonFinitePolicy).
///
/// Data-parallel: see StagedTrainerOptions::process_group. A checkpoint does not depend on the
/// number of ranks (its data position counts global micro-batches), so a run may resume on a
/// different world size.
///
/// Resume: with `resume` true and a checkpoint in checkpoint_dir, training
/// continues from its stage, step and data position with the saved weights,
/// optimizer and RNG state; on CPU the result is bit-identical to an
/// uninterrupted run.
///
/// Example:
/// ```
/// std::vector<kd::Stage> stages = {kd::Stage("kl", torch::nn::AnyModule(kl)).epochs(2)};
/// kd::StagedTrainer trainer(student, teacher, stages, kd::StagedTrainerOptions().checkpoint_dir("ckpt"));
/// trainer.fit(train, &validation);
/// ```
class StagedTrainer {
 public:
  StagedTrainer(Student student, std::optional<Teacher> teacher, std::vector<Stage> stages,
                StagedTrainerOptions options = {});

  void add_callback(std::shared_ptr<Callback> callback) { callbacks_.push_back(std::move(callback)); }

  /// Runs the stages (see the class comment). Calls check() first, so a mistake in a late stage stops
  /// the run before the first step.
  TrainSummary fit(const data::TensorDataset& train, const data::TensorDataset* validation = nullptr,
                   bool resume = false);

  /// Checks before training what would otherwise fail only when its stage comes, throwing kd::Error
  /// that names the stage: the trainable patterns of the stages up to the first with hooks match
  /// student parameters; every stage's loss accepts the models' outputs on the first two training
  /// examples (layer indices, widths, shapes, targets); the integer class targets of `train` and
  /// `validation` lie in [0, C) for a student with C logits (or equal options().ignore_index()).
  /// The models run in eval mode; the random generators, the losses' buffers, the models' modes and
  /// the parameters' requires_grad flags are as before afterwards, and no file is written. A program
  /// may call it alone, as a dry run.
  ///
  /// Example: `trainer.check(train, &validation);  // throws kd::Error naming the stage, before any step`
  void check(const data::TensorDataset& train, const data::TensorDataset* validation = nullptr);

  /// Metrics of the student on `dataset` (options().eval_task): accuracy, macro_f1, f1.<c> for
  /// classifiers; nll, perplexity, bits_per_byte, token_accuracy for language models.
  EvalResult evaluate(const data::TensorDataset& dataset, const std::string& stage_name, int64_t global_step);

  const std::vector<Stage>& stages() const { return stages_; }

  /// The moving average of the student's weights as the last fit() left it
  /// (options().ema_decay() > 0; nullptr before a fit or without EMA) — with
  /// self_distillation, the teacher the student learnt from at its last step.
  ///
  /// Example: `auto copy = make_student(); trainer.ema()->copy_to(*copy);   // score the averaged weights`
  std::shared_ptr<const Ema> ema() const { return ema_; }

 private:
  friend class detail::FitRun;  // one fit() call: the stage loop, the step, checkpoints (src/train/fit_run.h)

  /// A non-empty training set, and a teacher cache built over as many examples.
  void check_data(const data::TensorDataset& train) const;
  int64_t stage_length(const Stage& stage, int64_t steps_per_epoch) const;
  EvalTask eval_task_for(const data::TensorDataset& dataset) const;
  /// At most one weight-rewriting hook per stage; persisting hooks listed by every later stage; no EMA with them.
  void validate_hooks() const;

  Student student_;
  std::optional<Teacher> teacher_;
  std::vector<Stage> stages_;
  StagedTrainerOptions options_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  std::shared_ptr<Ema> ema_;  // of the last fit()
};

}  // namespace kd
