#pragma once
/// \file
/// What a stage switches on for its duration: LoRA adapters, quantization-aware training.

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "kd/losses/distill_batch.h"

namespace kd {

struct Stage;

/// A hook that changes how the student trains during the stages that list it
/// (kd::Stage::hooks). Unlike a kd::Callback, which only watches, a hook may
/// freeze parameters, add parameters to the optimizer and rewrite layer weights.
///
/// The trainer calls, for each stage that lists the hook:
///   on_stage_begin (after the stage's `trainable` patterns are applied; also when resuming inside the stage)
///   before_forward (before every training forward: each micro-batch)
///   after_step     (after every optimizer step that was applied, before the EMA update)
///   sync_weights   (at the stage's start or resume, at each epoch boundary and before each evaluation)
///   on_eval_begin / on_eval_end (around each evaluation inside the stage, after sync_weights)
///   on_stage_end   (after the last optimizer step, before the stage's final checkpoint and evaluation)
/// and saves state() in every checkpoint of the run, so a resume restores it.
///
/// Example (a hook that trains only the classifier head):
/// ```
/// struct HeadOnly : kd::StageHook {
///   std::string name() const override { return "head_only"; }
///   std::vector<torch::Tensor> on_stage_begin(torch::nn::Module& student, const kd::Stage&) override {
///     for (auto& p : student.named_parameters()) p.value().requires_grad_(p.key().rfind("fc.", 0) == 0);
///     return {};
///   }
/// };
/// stage.hooks({std::make_shared<HeadOnly>()});
/// ```
class StageHook {
 public:
  virtual ~StageHook() = default;
  /// Short name for logs and errors ("lora", "qat").
  virtual std::string name() const = 0;
  /// True for hooks that write layer weights before each forward (LoRA, QAT).
  /// Two such hooks in one stage would overwrite each other, so a stage may list at most one.
  virtual bool rewrites_weights() const { return false; }
  /// True if the model still depends on the hook after its stage ends (QAT's
  /// fake quantization; LoRA that is not merged), so every later stage must list it too.
  virtual bool persists_after_stage() const { return false; }
  /// Returns the parameters the hook adds to the stage's optimizer (at the stage's lr).
  virtual std::vector<torch::Tensor> on_stage_begin(torch::nn::Module& student, const Stage& stage) { return {}; }
  /// Before each training micro-batch's forward: may advance state (QAT's observers watch the weights).
  virtual void before_forward(const StepInfo& step) {}
  /// After the optimizer changed the parameters (skipped for a step whose update was dropped):
  /// e.g. pruning puts its zeros back where the optimizer's moments moved them.
  virtual void after_step(const StepInfo& step) {}
  /// Brings rewritten weights up to date with the parameters without advancing any state, so forwards
  /// outside training steps (evaluation, the sampler's epoch pass) neither see stale weights nor move
  /// an observer; a resume therefore replays exactly the state changes of an uninterrupted run.
  virtual void sync_weights() {}
  virtual void on_stage_end(torch::nn::Module& student, const Stage& stage) {}
  /// Around each evaluation inside the stage (after before_forward): e.g. QAT pauses its observers.
  virtual void on_eval_begin() {}
  virtual void on_eval_end() {}
  /// The hook's own trained or observed state (adapters, observers) for checkpoints, or nullptr.
  virtual std::shared_ptr<torch::nn::Module> state() { return nullptr; }
};

}  // namespace kd
