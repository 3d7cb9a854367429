#pragma once
/// \file
/// Stages described as data (loss specs by registered name), and their construction.

#include <memory>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "kd/losses/registry.h"
#include "kd/losses/weighting/policy.h"
#include "kd/train/stage.h"

namespace kd {

/// A stage as data: what kd::Stage holds, with the loss given as a list of
/// kd::LossSpec terms (summed by a kd::WeightedSum) instead of a module. The
/// app layer fills these from a config; build_stages() makes the modules.
///
/// Example:
/// ```
/// kd::StageSpec s = kd::StageSpec("logits").epochs(2).losses(
///     {kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0),
///      kd::LossSpec("hard_label_ce").name("ce").weight(0.2)});
/// ```
struct StageSpec {
  StageSpec() = default;
  /* implicit */ StageSpec(std::string name) : name_(std::move(name)) {}  // NOLINT

  TORCH_ARG(std::string, name);
  /// The loss terms (at least one), summed with their weights.
  TORCH_ARG(std::vector<LossSpec>, losses);
  /// As kd::Stage: epochs (used when steps is 0), steps, lr, loss_lr, trainable, eval_every.
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, steps) = 0;
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, loss_lr) = -1.0;
  TORCH_ARG(std::vector<std::string>, trainable) = {};
  TORCH_ARG(int64_t, eval_every) = 0;
  /// As kd::Stage::param_groups and kd::Stage::ema.
  TORCH_ARG(std::vector<ParamGroup>, param_groups) = {};
  TORCH_ARG(bool, ema) = true;
  /// As kd::Stage::hooks (the app layer makes them, since they need the student).
  TORCH_ARG(std::vector<std::shared_ptr<StageHook>>, hooks) = {};
  /// The policy that weighs the terms each step (kd::WeightedSum's; empty: the
  /// terms' own weights). Made by the caller, as hooks are: kd::MinNormWeighting
  /// needs the student's parameters, kd::RewardWeighting a kd::RewardFeedback.
  TORCH_ARG(AnyWeighting, weighting) = {};
};

/// Makes the stages, each loss a kd::WeightedSum of its terms created by `registry`.
///
/// A term whose name, type and options are the same in several stages is one
/// module shared by those stages (its weight may differ), so a projection that
/// stage 1 learnt keeps training in stage 2 instead of starting again.
///
/// A stage's weighting policy, when set, combines its terms (each stage owns
/// its policy: two stages never share one).
///
/// Throws kd::Error (kConfig) for a stage without a name or without terms, two
/// terms with one name in a stage, a policy built for another number of terms,
/// and whatever the registry refuses (unknown type, bad keys), each prefixed
/// with "stage '<name>'".
///
/// Example: `auto stages = kd::build_stages(kd::progressive3(kd::Progressive3Options()));`
std::vector<Stage> build_stages(const std::vector<StageSpec>& specs,
                                const LossRegistry& registry = LossRegistry::global());

}  // namespace kd
