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
  /// Evaluate every this many optimizer steps (0: only at the end of the stage).
  TORCH_ARG(int64_t, eval_every) = 0;
  /// Hooks enabled for this stage (kd::lora::Hook, kd::qat::Hook, your own);
  /// one hook object may be listed by several stages.
  TORCH_ARG(std::vector<std::shared_ptr<StageHook>>, hooks) = {};
};

}  // namespace kd
