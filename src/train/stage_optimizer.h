#pragma once
// Private to src/train: the parameters a stage trains and the optimizer it builds over them.

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "kd/train/stage.h"
#include "kd/train/staged_trainer.h"

namespace kd::detail {

/// Marks the student's parameters trainable by the stage's patterns (Stage::trainable; all when it has
/// none) and freezes the rest; returns the trainable ones. Throws kd::Error when none matches.
std::vector<torch::Tensor> select_trainable(torch::nn::Module& student, const Stage& stage);

/// One optimizer group per ParamGroup (student parameters matching its patterns, first match wins),
/// then the stage's default group (the other trainable student parameters and the hooks' own), then
/// the loss's parameters at loss_lr. `base_lrs` gets each group's lr, in the same order.
std::unique_ptr<torch::optim::Optimizer> make_stage_optimizer(const StagedTrainerOptions& o, const Stage& stage,
                                                              torch::nn::Module& student,
                                                              const std::vector<torch::Tensor>& hook_params,
                                                              std::vector<torch::Tensor> loss_params,
                                                              std::vector<double>& base_lrs);

}  // namespace kd::detail
