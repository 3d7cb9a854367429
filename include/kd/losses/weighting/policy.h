#pragma once
/// \file
/// The interface a dynamic weighting policy implements for kd::WeightedSum.

#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "kd/losses/distill_batch.h"

namespace kd {

/// What a policy may look at besides the loss values.
///
/// Built implicitly from a StepInfo, so `policy->combine(losses, names, step)`
/// works outside a WeightedSum (then there is no batch and no modules).
struct WeightingContext {
  /* implicit */ WeightingContext(StepInfo step = {}) : step(step) {}  // NOLINT(google-explicit-constructor)

  /// Where training stands (progress, global step).
  StepInfo step;
  /// The batch the losses were computed on; nullptr outside a WeightedSum.
  const DistillBatch* batch = nullptr;
  /// The loss module of each term, in term order; empty outside a WeightedSum.
  /// Policies that weigh by what a loss compares (kd::LayerSimilarityPolicy)
  /// query them through capability interfaces such as kd::LayerFeatureSource.
  std::vector<std::shared_ptr<torch::nn::Module>> modules;
};

/// What a policy returns for one step.
struct WeightingResult {
  /// The combined loss to back-propagate (may contain the policy's own
  /// parameters, e.g. uncertainty weighting's log-variances).
  torch::Tensor total;
  /// [K] detached: the weight each loss received this step (logged as "w.<name>").
  torch::Tensor weights;
  /// Extra detached scalars to log; kd::WeightedSum prefixes them with "weighting.".
  std::map<std::string, torch::Tensor> parts;
};

/// A rule that combines K loss values into one, usually as Σ_k w_k·L_k with
/// weights it chooses each step. Implementations are torch modules (so their
/// parameters and buffers reach optimizers and checkpoints) that also derive
/// from this interface:
///
/// ```
/// class MyWeightingImpl : public torch::nn::Cloneable<MyWeightingImpl>, public kd::WeightingPolicy { ... };
/// ```
///
/// Built-ins: kd::LayerSimilarityPolicy (cosine similarity × sigmoid layer
/// prior, per term), kd::UncertaintyWeighting (learned, Kendall et al. 2018),
/// kd::RewardWeighting (REINFORCE on a reward, fed by kd::RewardFeedback from
/// evaluations), kd::MinNormWeighting (MGDA, Sener & Koltun 2018). Static
/// weights and schedules need no policy (see kd::WeightedTerm).
class WeightingPolicy {
 public:
  virtual ~WeightingPolicy() = default;

  /// Combines `losses` (K live scalars, in term order, each already multiplied
  /// by its term's own weight) named `names`; `context` says where training
  /// stands and, inside a WeightedSum, which batch and modules produced them.
  virtual WeightingResult combine(const std::vector<torch::Tensor>& losses, const std::vector<std::string>& names,
                                  const WeightingContext& context) = 0;

  /// The number of losses the policy was built for, or −1 for any number.
  virtual int64_t num_losses() const { return -1; }
};

/// A type-erased handle to a weighting policy module (empty = no policy).
/// Copies share the policy; clone() deep-copies it.
///
/// Example: `kd::AnyWeighting w = kd::UncertaintyWeighting(kd::UncertaintyWeightingOptions(2));`
class AnyWeighting {
 public:
  AnyWeighting() = default;

  /// From a policy's holder or a `std::shared_ptr` to its Impl.
  template <typename P, typename = std::enable_if_t<!std::is_same<std::decay_t<P>, AnyWeighting>::value>>
  /* implicit */ AnyWeighting(P&& policy) {  // NOLINT(google-explicit-constructor)
    using D = std::decay_t<P>;
    if constexpr (torch::detail::is_module_holder<D>::value) {
      set(policy.ptr());
    } else {
      set(std::shared_ptr<typename D::element_type>(policy));
    }
  }

  bool is_empty() const noexcept { return module_ == nullptr; }
  explicit operator bool() const noexcept { return module_ != nullptr; }
  WeightingPolicy* get() const noexcept { return policy_; }
  WeightingPolicy* operator->() const noexcept { return policy_; }
  /// The policy as a module (for register_module), nullptr when empty.
  std::shared_ptr<torch::nn::Module> module() const noexcept { return module_; }
  /// A deep copy via the module's clone().
  AnyWeighting clone(const c10::optional<torch::Device>& device = c10::nullopt) const;

  /// The policy as `T` (an Impl type), or nullptr.
  template <typename T>
  std::shared_ptr<T> as() const {
    return std::dynamic_pointer_cast<T>(module_);
  }

 private:
  template <typename T>
  void set(std::shared_ptr<T> impl) {
    static_assert(std::is_base_of<torch::nn::Module, T>::value && std::is_base_of<WeightingPolicy, T>::value,
                  "a weighting policy is a torch::nn::Module that also derives from kd::WeightingPolicy");
    policy_ = impl.get();
    module_ = std::move(impl);
  }
  void set_module(std::shared_ptr<torch::nn::Module> module);

  std::shared_ptr<torch::nn::Module> module_;
  WeightingPolicy* policy_ = nullptr;
};

}  // namespace kd
