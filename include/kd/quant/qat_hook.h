#pragma once
/// \file
/// Quantization-aware training as a stage hook: fake quantization on from the stage that lists it,
/// observers frozen for the last part of each such stage.

#include <string>

#include <torch/arg.h>

#include "kd/quant/qat.h"
#include "kd/train/stage_hook.h"

namespace kd::qat {

/// Options for kd::qat::Hook.
struct HookOptions {
  /// Observers (weight and activation ranges) run until this fraction of each stage using the
  /// hook, then freeze, so the last part trains against fixed scales (torch's QAT recipe). 1: never freeze.
  TORCH_ARG(double, freeze_observers_at) = 0.5;
};

/// Quantization-aware training during the stages that list it (kd::Stage::hooks). Construction
/// puts the prepared model back in float (QATImpl::restore()), so earlier stages train it as an
/// ordinary model. At the start of a stage using the hook, fake quantization and the observers
/// switch on; before every forward the observers are on or off by the stage's progress (see
/// HookOptions) and the weights are refreshed; evaluations run with the observers paused, so
/// validation data never moves a range. Once on, QAT stays on: every later stage must list the
/// hook too (kd::StagedTrainer checks), and after the run the student is the fake-quantized model
/// that kd::qat::export_int8() writes.
///
/// Example:
/// ```
/// auto student = kd::models::DepthwiseCnnStudent(kd::models::DepthwiseCnnStudentOptions().activation_quant(true));
/// auto hook = std::make_shared<kd::qat::Hook>(kd::qat::prepare(student.ptr()));
/// stages.push_back(kd::Stage("qat", torch::nn::AnyModule(kl)).epochs(1).lr(2e-4).hooks({hook}));
/// ... trainer.fit(train, &val);
/// kd::qat::export_int8(*student, *hook->qat(), "student.int8.pt");
/// ```
class Hook : public StageHook {
 public:
  explicit Hook(QAT qat, HookOptions options = {});

  std::string name() const override { return "qat"; }
  bool rewrites_weights() const override { return true; }
  bool persists_after_stage() const override { return true; }
  std::vector<torch::Tensor> on_stage_begin(torch::nn::Module& student, const Stage& stage) override;
  void before_forward(const StepInfo& step) override;
  void sync_weights() override;  ///< refresh with the observers paused
  void on_stage_end(torch::nn::Module& student, const Stage& stage) override;
  void on_eval_begin() override;
  void on_eval_end() override;
  std::shared_ptr<torch::nn::Module> state() override { return qat_.ptr(); }

  const QAT& qat() const { return qat_; }

 private:
  QAT qat_;
  HookOptions options_;
  bool observers_before_eval_ = false;
};

}  // namespace kd::qat
