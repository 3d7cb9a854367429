#pragma once
/// \file
/// A training callback that writes TensorBoard scalars.

#include <memory>
#include <string>

#include "kd/train/callback.h"
#include "kd/train/tensorboard_writer.h"

namespace kd {

/// Writes every step's and every evaluation's numbers as TensorBoard scalars into `dir`
/// (`tensorboard --logdir dir`):
///
///   loss/total, loss/<part>      the step's loss and each part the loss reported ("kl", "feat.0", ...)
///   weight/<term>                each term's effective weight (the parts named "w.<term>")
///   train/lr, train/grad_norm, train/samples_per_s
///   validation/<metric>          each evaluation's metrics ("accuracy", "macro_f1", "f1.3", "bits_per_byte")
///
/// Step scalars are at the step's number counted from 1 (the first optimizer step is step 1), evaluations
/// at the steps done when they ran, so an evaluation at a stage's end lines up with its last step. Each fit
/// starts a new event file with a restart marker (SessionLog START) at its first step, so TensorBoard drops
/// what earlier files in the folder logged from there on: a killed process's steps after the checkpoint a
/// resume starts from, or an earlier run's whole curve.
///
/// Example: `trainer.add_callback(std::make_shared<kd::TensorBoardLogger>("runs/x/tensorboard/student"));`
class TensorBoardLogger : public Callback {
 public:
  /// The folder (created when needed) and the event file are made when fit() begins, once the trainer has
  /// accepted the run.
  explicit TensorBoardLogger(std::string dir);

  void on_step_end(const StepReport& report) override;
  void on_eval(const EvalResult& result) override;
  void on_fit_begin(const FitInfo& info) override;

  /// The event file being written; null before fit() begins.
  const TensorBoardWriter* writer() const { return writer_.get(); }

 private:
  std::string dir_;
  std::unique_ptr<TensorBoardWriter> writer_;
};

}  // namespace kd
