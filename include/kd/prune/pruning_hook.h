#pragma once
/// \file
/// Pruning as a stage hook: a sparsity schedule over the stages that list it.

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <torch/arg.h>

#include "kd/prune/pruning.h"
#include "kd/train/stage_hook.h"

namespace kd::prune {

/// Sparsity over one stage: from `start` at its first step to `end` at its last (cubic, see cubic_sparsity).
struct StageSparsity {
  double start = 0.0;
  double end = 0.5;
};
/// Stage name -> its schedule.
using StageSchedules = std::map<std::string, StageSparsity>;

/// Options for Hook.
struct HookOptions {
  /// The schedule of a stage that lists the hook and has no entry in `stages`.
  TORCH_ARG(StageSparsity, schedule) = {};
  /// Per stage (by name): its own schedule, e.g. {"logits": {0, 0.5}, "finetune": {0.5, 0.5}}.
  TORCH_ARG(StageSchedules, stages) = {};
  /// Steps between mask updates (the masks are re-applied after every step regardless).
  TORCH_ARG(int64_t, update_every) = 10;
};

/// Gradual magnitude pruning during the stages that list it:
///
///   at stage start:           gradients of covered parameters are masked, s = start
///   every update_every steps: s = cubic_sparsity(start, end, progress), masks updated, weights masked
///   after each optimizer step, at evaluations and checkpoints: weights masked again (exact zeros)
///   at stage end:             s = end, masks updated and applied, gradient masks removed
///
/// Masks only shrink, and the model keeps its zeros after the stage, so every later stage must list
/// the hook too (persists_after_stage); a stage that should only hold the sparsity reached gives
/// start = end. The masks and the target sparsity are the hook's state(), in every checkpoint, so a
/// resume continues with the same pruned weights. Pruning zeroes the registered weights (W₀ under
/// QAT, which then quantizes the pruned W₀), so it combines with QAT; with LoRA the adapters would
/// refill pruned weights, so do not list both.
///
/// Example:
/// ```
/// auto hook = std::make_shared<kd::prune::Hook>(kd::prune::prepare(student.ptr(), kd::prune::Options().exclude({"fc"})),
///                                               kd::prune::HookOptions().schedule({0.0, 0.6}));
/// stages[2].hooks({hook});
/// ```
class Hook : public StageHook {
 public:
  Hook(Pruning pruning, HookOptions options = {});
  std::string name() const override { return "prune"; }
  bool persists_after_stage() const override { return true; }
  std::vector<torch::Tensor> on_stage_begin(torch::nn::Module& student, const Stage& stage) override;
  void before_forward(const StepInfo& step) override;
  void after_step(const StepInfo& step) override;
  void sync_weights() override;
  void on_stage_end(torch::nn::Module& student, const Stage& stage) override;
  std::shared_ptr<torch::nn::Module> state() override { return pruning_.ptr(); }
  const Pruning& pruning() const { return pruning_; }

 private:
  Pruning pruning_;
  HookOptions options_;
  StageSparsity current_;
};

}  // namespace kd::prune
