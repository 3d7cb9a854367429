#pragma once
/// \file
/// One stage of a staged distillation run.

#include <memory>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/modules/container/any.h>

#include "kd/train/stage_hook.h"

namespace kd {

/// Optimizer settings for the trainable student parameters whose names match
/// `patterns` (ECMAScript regexes, any match): e.g. a head that learns faster
/// than the backbone. A parameter goes to the first group that matches; the
/// rest use the stage's `lr` and the trainer's weight decay.
///
/// Example: `kd::ParamGroup{{"^fc\\."}, 3e-3, 0.0}` (the classifier at 3e-3, no weight decay).
struct ParamGroup {
  std::vector<std::string> patterns;
  double lr = 1e-3;
  /// Weight decay of this group; < 0 means the trainer's weight_decay.
  double weight_decay = -1.0;
};

/// A stage: what is trained, on which loss, for how long.
///
/// Example (stage 2 of the progressive recipe):
/// ```
/// kd::Stage s("attention", torch::nn::AnyModule(total));
/// s.epochs(1).lr(5e-4).trainable({"^model\\.layers\\."});
/// ```
struct Stage {
  Stage(std::string name, torch::nn::AnyModule loss) : name_(std::move(name)), loss_(std::move(loss)) {}

  TORCH_ARG(std::string, name);
  /// Any module with `kd::LossResult forward(const kd::DistillBatch&)`; its own
  /// parameters (projections, learned weights) train with the student's.
  TORCH_ARG(torch::nn::AnyModule, loss);
  /// Length in epochs; used when `steps` is 0.
  TORCH_ARG(int64_t, epochs) = 1;
  /// Length in optimizer steps; overrides `epochs` when > 0.
  TORCH_ARG(int64_t, steps) = 0;
  /// Learning rate of the student's parameters in this stage.
  TORCH_ARG(double, lr) = 1e-3;
  /// Learning rate of the loss's own parameters; < 0 means "same as lr".
  TORCH_ARG(double, loss_lr) = -1.0;
  /// ECMAScript regexes over student parameter names (as named_parameters()
  /// gives them); a parameter trains if any matches. Empty: all parameters.
  TORCH_ARG(std::vector<std::string>, trainable) = {};
  /// Parameter groups with their own lr / weight decay (see ParamGroup); empty: one group at `lr`.
  TORCH_ARG(std::vector<ParamGroup>, param_groups) = {};
  /// Update the EMA of the student's weights in this stage (when the trainer's ema_decay > 0).
  /// Off in a stage that rewrites weights (LoRA, QAT), whose effective weights the EMA cannot see.
  TORCH_ARG(bool, ema) = true;
  /// Evaluate every this many optimizer steps (0: only at the end of the stage).
  TORCH_ARG(int64_t, eval_every) = 0;
  /// Hooks enabled for this stage (kd::lora::Hook, kd::qat::Hook, your own);
  /// one hook object may be listed by several stages.
  TORCH_ARG(std::vector<std::shared_ptr<StageHook>>, hooks) = {};
};

}  // namespace kd
