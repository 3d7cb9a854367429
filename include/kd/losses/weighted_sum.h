#pragma once
/// \file
/// A weighted sum of named losses: static weights, schedules, or a weighting policy.

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/any_loss.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/loss_traits.h"
#include "kd/losses/schedule.h"
#include "kd/losses/weighting/policy.h"

namespace kd {

/// One named loss of a WeightedSum and its weight c: a constant, or a
/// kd::Schedule of the stage's progress (e.g. α = 0.7·(1 − progress) is
/// `kd::Schedule::linear(0.7, 0.0)`).
///
/// `name` becomes the loss's submodule name and the prefix of its logged
/// parts: non-empty, no '.', not "w" or "weighting" (reserved for the weight
/// parts), unique within the sum.
///
/// Example: `kd::WeightedTerm t{"kl", kl, kd::Schedule::linear(0.7, 0.0)};`
struct WeightedTerm {
  WeightedTerm(std::string name, AnyLoss loss, double weight = 1.0)
      : name(std::move(name)), loss(std::move(loss)), weight(Schedule::constant(weight)) {}
  WeightedTerm(std::string name, AnyLoss loss, Schedule weight)
      : name(std::move(name)), loss(std::move(loss)), weight(std::move(weight)) {}

  std::string name;
  AnyLoss loss;
  Schedule weight;
};

/// A sum of named losses, each with its own weight, optionally re-weighted by
/// a policy:
///
///   without a policy:  L = Σ_k c_k(p)·L_k
///   with a policy π:   L = π.combine({c_k(p)·L_k}_k)   (Σ_k π_k·c_k(p)·L_k for
///                      kd::LayerSimilarityPolicy, kd::RewardWeighting and
///                      kd::MinNormWeighting; see kd::UncertaintyWeighting for
///                      its regularised form)
///
/// where L_k = the k-th loss's `forward(batch).total`, c_k its term weight
/// (constant or schedule) and p = `batch.step.progress`. The weight a loss
/// effectively received, w_k = c_k·π_k (π_k = 1 without a policy), is logged
/// every step. The policy also sees the batch and the terms' modules
/// (kd::WeightingContext), e.g. to weigh each term by the features it compares.
///
/// Any module with `kd::LossResult forward(const kd::DistillBatch&)` can be a
/// term — built-ins, user modules, another WeightedSum (see kd::AnyLoss). Each
/// loss is registered as a submodule under its name and a policy as
/// "weighting", so `parameters()` includes loss-owned parameters (projections,
/// learned log-variances) and optimizers and checkpoints see them.
///
/// Parts (all detached):
/// - "<name>": L_k, the k-th loss's total (unweighted);
/// - the k-th loss's own parts, as "<name>.<part>" — left unchanged when the
///   part is already called "<name>" or starts with "<name>." (so a
///   TemperatureKL named "kl" logs "kl", not "kl.kl");
/// - "w.<name>": w_k, the weight used this step (CPU float64 scalars);
/// - "weighting.<part>": extra parts a policy reports.
///
/// Count (LossResult::count): the one the terms that report a count agree on (KL and CE over the same
/// tokens); unset when none reports one or two disagree.
///
/// Errors (kd::Error): an invalid or duplicate term name, an empty loss, or a
/// policy built for another number of losses (kConfig); forward on an empty
/// sum (kState); a loss whose total is not a scalar (kShape); a non-finite
/// weight (kValue, naming the loss and the step). A sub-loss's own kd::Error
/// is re-thrown with "loss '<name>': " in front. A non-finite term makes the
/// total non-finite (the policy is then not asked) and the trainer's
/// non-finite policy decides what the step becomes.
///
/// Example (the progressive recipe's L = L_feat + 0.5·L_attn + 0.8·L_kl):
/// ```
/// kd::WeightedSum total({{"feat", feat, 1.0}, {"attn", attn, 0.5}, {"kl", kl, 0.8}});
/// kd::LossResult r = total->forward(batch);   // r.parts["kl"], r.parts["w.attn"], ...
/// // a schedule, and a learned policy over the whole sum:
/// kd::WeightedSum soft_hard({{"kl", kl, kd::Schedule::linear(0.7, 0.0)}, {"ce", ce}});
/// kd::WeightedSum learned({{"kl", kl}, {"ce", ce}}, kd::UncertaintyWeighting(2));
/// torch::optim::Adam opt(learned->parameters(), 1e-3);   // includes the log-variances
/// ```
class WeightedSumImpl : public torch::nn::Cloneable<WeightedSumImpl>, public NeedsInputGrad {
 public:
  WeightedSumImpl() = default;
  explicit WeightedSumImpl(std::vector<WeightedTerm> terms, AnyWeighting weighting = {});

  /// Validates the terms and (re-)registers the losses and the policy as submodules.
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  /// Appends a term (registered at once, so build optimizers afterwards).
  void add(WeightedTerm term);

  /// True when any term's loss needs input gradients (e.g. kd::GradientMatching).
  bool needs_input_grad() const override;

  const std::vector<WeightedTerm>& terms() const noexcept { return terms_; }
  /// Term names, in order.
  std::vector<std::string> names() const;
  /// The loss named `name`; kd::Error (kConfig) listing the names when absent.
  AnyLoss& loss(const std::string& name);
  /// The policy (empty when the sum uses term weights only).
  const AnyWeighting& weighting() const noexcept { return weighting_; }

  /// E.g. "kd::WeightedSum(feat: constant(1), kl: linear(0.7 -> 0); weighting: kd::UncertaintyWeightingImpl)".
  void pretty_print(std::ostream& stream) const override;

  /// A deep copy: every loss and the policy cloned (user losses must be Cloneable).
  std::shared_ptr<torch::nn::Module> clone(
      const c10::optional<torch::Device>& device = c10::nullopt) const override;

 private:
  void check_term(const WeightedTerm& term, size_t index) const;
  void check_policy_size() const;

  std::vector<WeightedTerm> terms_;
  AnyWeighting weighting_;
};

/// Holder of WeightedSumImpl, as `TORCH_MODULE(WeightedSum)` would make it,
/// plus a constructor that takes the terms as a braced list (the macro's
/// forwarding constructor cannot deduce one).
class WeightedSum : public torch::nn::ModuleHolder<WeightedSumImpl> {
 public:
  using torch::nn::ModuleHolder<WeightedSumImpl>::ModuleHolder;
  using Impl = WeightedSumImpl;

  /* implicit */ WeightedSum(std::vector<WeightedTerm> terms, AnyWeighting weighting = {})  // NOLINT
      : ModuleHolder(std::make_shared<WeightedSumImpl>(std::move(terms), std::move(weighting))) {}
};

}  // namespace kd
