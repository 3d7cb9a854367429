#pragma once
/// \file
/// Progress on the console: a line every N steps with loss parts, lr, speed and ETA.

#include <chrono>

#include "kd/train/callback.h"

namespace kd {

/// Logs through spdlog every `every` optimizer steps (and at each stage's
/// last step): stage, step/total, loss and its parts, lr, samples/s, ETA of
/// the stage. Evaluations are logged as they come.
///
/// Example: `trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));`
class ConsoleLogger : public Callback {
 public:
  explicit ConsoleLogger(int64_t every = 100) : every_(every) {}
  void on_stage_begin(const Stage& stage, const StepInfo& step) override;
  void on_step_end(const StepReport& report) override;
  void on_eval(const EvalResult& result) override;

 private:
  int64_t every_;
  std::string stage_;
  int64_t first_step_ = 0;
  std::chrono::steady_clock::time_point stage_start_;
};

}  // namespace kd
