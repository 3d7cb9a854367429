#pragma once
/// \file
/// A scope in which a module runs in eval mode.

#include <torch/nn/module.h>

namespace kd {

/// Puts `module` in eval mode and gives it back its training flag on every exit path (an exception
/// included), so a forward for scoring or sampling never leaves a training model in eval mode.
///
/// Example:
/// ```
/// { kd::EvalModeGuard eval_mode(*model); auto out = model->forward(x); }   // model->is_training() as before
/// ```
class EvalModeGuard {
 public:
  explicit EvalModeGuard(torch::nn::Module& module) : module_(module), was_training_(module.is_training()) {
    module_.eval();
  }
  ~EvalModeGuard() { module_.train(was_training_); }
  EvalModeGuard(const EvalModeGuard&) = delete;
  EvalModeGuard& operator=(const EvalModeGuard&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

}  // namespace kd
