#pragma once
/// \file
/// Quantization-aware training as a stage hook: fake quantization on from the stage that lists it,
/// observers frozen for the last part of each such stage.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <torch/arg.h>

#include "kd/quant/qat.h"
#include "kd/train/stage_hook.h"

namespace kd::qat {

/// What the QAT hook does in one stage (HookOptions::stages), e.g. a calibration stage
/// (fake_quant off, observers on) followed by a QAT stage whose observers freeze from step k.
struct StageOptions {
  /// Fake quantization on during the stage. Off: the model computes in float (weights W₀,
  /// activation points pass through) while the observers may still record ranges (calibration).
  TORCH_ARG(bool, fake_quant) = true;
  /// Observers on at the stage's start (until the freeze point). Off: ranges, scales and zero
  /// points stay as the previous stage left them for the whole stage.
  TORCH_ARG(bool, observers) = true;
  /// Freeze the observers once the stage's progress reaches this fraction, in [0, 1]; unset:
  /// HookOptions::freeze_observers_at.
  TORCH_ARG(std::optional<double>, freeze_observers_at) = std::nullopt;
  /// Freeze the observers from this optimizer step of the stage on (0-based, ≥ 0: step k and
  /// later run frozen); takes precedence over the fractions.
  TORCH_ARG(std::optional<int64_t>, freeze_observers_at_step) = std::nullopt;
};

/// StageOptions by stage name (kd::Stage::name()).
using StageOptionsByName = std::map<std::string, StageOptions>;

/// Options for kd::qat::Hook.
struct HookOptions {
  /// Observers (weight and activation ranges) run until this fraction of each stage using the
  /// hook, then freeze, so the last part trains against fixed scales (torch's QAT recipe). 1: never
  /// freeze. A stage named in `stages` may override it.
  TORCH_ARG(double, freeze_observers_at) = 0.5;
  /// Per-stage settings by kd::Stage::name(); a stage not named here gets StageOptions() (fake
  /// quantization on, observers on until freeze_observers_at).
  TORCH_ARG(StageOptionsByName, stages) = {};

 public:
  /// Adds or replaces the settings of the stage called `name`.
  HookOptions& stage(const std::string& name, StageOptions options) {
    stages_[name] = std::move(options);
    return *this;
  }
  /// The settings of the stage called `name` (StageOptions() if it is not named).
  StageOptions stage_options(const std::string& name) const {
    const auto it = stages_.find(name);
    return it == stages_.end() ? StageOptions() : it->second;
  }
};

/// Quantization-aware training during the stages that list it (kd::Stage::hooks). Construction
/// puts the prepared model back in float (QATImpl::restore()), so earlier stages train it as an
/// ordinary model. At the start of a stage using the hook, fake quantization and the observers
/// switch on or off as that stage's StageOptions say; before every forward the observers are on
/// until the stage's freeze point (a step, or a fraction of the stage) and off after it, and the
/// weights are refreshed; evaluations run with the observers paused, so validation data never
/// moves a range. The per-stage settings follow from the stage's name and step, so a resume
/// inside any stage switches exactly as the uninterrupted run did. Once on, QAT stays on: every later stage must list the
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
///
/// // Two QAT stages: calibrate ranges in float first, then train fake-quantized, frozen from step 100.
/// auto hook2 = std::make_shared<kd::qat::Hook>(qat, kd::qat::HookOptions()
///     .stage("calibrate", kd::qat::StageOptions().fake_quant(false).observers(true).freeze_observers_at(1.0))
///     .stage("qat", kd::qat::StageOptions().freeze_observers_at_step(100)));
/// ```
///
/// Throws kd::Error (kValue) at construction for a freeze fraction outside [0, 1] or a negative
/// freeze step, naming the stage.
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
  /// Whether the observers run at `step` of the current stage.
  bool observing_at(const StepInfo& step) const;

  QAT qat_;
  HookOptions options_;
  StageOptions current_;  // the settings of the stage in progress
  bool observers_before_eval_ = false;
};

}  // namespace kd::qat
