#pragma once
/// \file
/// LoRA as a stage hook: adapters train in the stages that list it, merged at the end.

#include <string>

#include <torch/arg.h>

#include "kd/adapters/lora.h"
#include "kd/train/stage_hook.h"

namespace kd::lora {

/// Options for kd::lora::Hook.
struct HookOptions {
  /// Fold the adapters into the base weights when a stage using the hook ends,
  /// so later stages and exports see an ordinary model (and need not list the hook).
  TORCH_ARG(bool, merge_at_end) = true;
  /// If set, the adapters alone are written here (atomically) at the end of each stage using the hook, before merging.
  TORCH_ARG(std::string, save_adapter_to) = "";
};

/// Trains only LoRA adapters during the stages that list it (kd::Stage::hooks):
/// at stage start the base model is frozen (except parameters the stage's
/// `trainable` patterns name explicitly, e.g. a classifier head; the adapted
/// layers' own weights stay frozen regardless), A and B join the optimizer at
/// the stage's lr, and before every forward the effective weights are written
/// (LoRAImpl::refresh; attached kd::nn::Linear adapters need nothing). At stage end: save the
/// adapter if asked, then merge if asked. A stage that starts with the adapters merged (a second
/// LoRA stage) unmerges them first.
///
/// At the second forward of a stage the hook checks that the first one ran through each attached
/// kd::nn::Linear's own forward: a layer declared as torch::nn::Linear but holding a
/// kd::nn::LinearImpl calls the base forward and skips its adapter. If no attached layer was
/// reached that is kd::Error (kModel), naming them and the fix; if only some were (a model that
/// skips layers on some inputs), a warning names those. (When the adapters are all that trains and
/// none is reached, LibTorch's first backward already fails: nothing in the loss requires grad.)
///
/// rewrites_weights() stays true even when every target is attached: kd::StagedTrainer refuses EMA
/// with such hooks, and EMA averages the student's parameters only, never the adapters.
///
/// Example:
/// ```
/// auto lora = kd::lora::apply(student.ptr(), kd::lora::Options().rank(4).targets({"fc1", "fc2"}));
/// auto hook = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().save_adapter_to("run/adapter.pt"));
/// stages[2].hooks({hook});   // LoRA in stage 3 only
/// ```
class Hook : public StageHook {
 public:
  explicit Hook(LoRA lora, HookOptions options = {}) : lora_(std::move(lora)), options_(std::move(options)) {}

  std::string name() const override { return "lora"; }
  bool rewrites_weights() const override { return true; }
  bool persists_after_stage() const override { return !options_.merge_at_end(); }
  std::vector<torch::Tensor> on_stage_begin(torch::nn::Module& student, const Stage& stage) override;
  void before_forward(const StepInfo&) override;
  void sync_weights() override { lora_->refresh(); }
  void on_stage_end(torch::nn::Module& student, const Stage& stage) override;
  std::shared_ptr<torch::nn::Module> state() override { return lora_.ptr(); }

  const LoRA& lora() const { return lora_; }
  /// What trained in the most recent stage using the hook (empty before one began).
  const ParameterReport& stage_report() const { return stage_report_; }

 private:
  LoRA lora_;
  HookOptions options_;
  ParameterReport stage_report_;
  std::vector<int64_t> calls_at_stage_begin_;
  int64_t forwards_in_stage_ = 0;
};

}  // namespace kd::lora
