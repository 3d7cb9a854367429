#pragma once
/// \file
/// A type-erased loss module: anything with `kd::LossResult forward(const kd::DistillBatch&)`.

#include <memory>
#include <type_traits>
#include <utility>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include "kd/losses/distill_batch.h"
#include "kd/losses/loss_traits.h"

namespace kd {
namespace detail {

template <typename T, typename = void>
struct has_needs_input_grad : std::false_type {};
template <typename T>
struct has_needs_input_grad<T, std::void_t<decltype(std::declval<const T&>().needs_input_grad())>>
    : std::true_type {};

template <typename T, typename = void>
struct loss_forward_result {
  using type = void;
};
template <typename T>
struct loss_forward_result<T, std::void_t<decltype(std::declval<T&>().forward(std::declval<const DistillBatch&>()))>> {
  using type = decltype(std::declval<T&>().forward(std::declval<const DistillBatch&>()));
};

template <typename T>
struct is_shared_ptr : std::false_type {};
template <typename T>
struct is_shared_ptr<std::shared_ptr<T>> : std::true_type {};

/// What kd::AnyLoss can be built from: an AnyModule, a module holder, a
/// shared_ptr to a module, or a module.
template <typename D, typename = void>
struct is_loss_source
    : std::integral_constant<bool, std::is_same<D, torch::nn::AnyModule>::value ||
                                       torch::detail::is_module_holder<D>::value ||
                                       std::is_base_of<torch::nn::Module, D>::value> {};
template <typename T>
struct is_loss_source<std::shared_ptr<T>> : std::is_base_of<torch::nn::Module, T> {};

}  // namespace detail

/// Holds any loss module — a built-in (kd::TemperatureKL, ...), a user's own
/// module, or a `torch::nn::AnyModule` wrapping one — behind one type, the way
/// `torch::nn::AnyModule` does, but knowing the loss contract:
///
///   LossResult forward(const DistillBatch& batch)
///
/// Built from a typed module (a `TORCH_MODULE` holder, a `std::shared_ptr<Impl>`
/// or an `Impl` moved in) the call goes straight to `Impl::forward` (no
/// `AnyValue` copy of the batch), the signature is checked at compile time, and
/// a `needs_input_grad()` member is found even when the module does not derive
/// from kd::NeedsInputGrad. Built from an `AnyModule` the call goes through
/// `AnyModule::forward<LossResult>` and a signature mismatch throws kd::Error
/// (kConfig) at the first forward. Copies share the module (like AnyModule's);
/// clone() deep-copies it.
///
/// Example:
/// ```
/// kd::AnyLoss kl = kd::TemperatureKL(kd::TemperatureKLOptions().temperature(3.0));
/// kd::AnyLoss mine = torch::nn::AnyModule(MyLoss());
/// kd::LossResult r = kl.forward(batch);
/// ```
class AnyLoss {
 public:
  AnyLoss() = default;

  /// From a holder, a `std::shared_ptr<Impl>`, an `Impl` rvalue, or a `torch::nn::AnyModule`.
  template <typename M, typename = std::enable_if_t<detail::is_loss_source<std::decay_t<M>>::value>>
  /* implicit */ AnyLoss(M&& module) {  // NOLINT(google-explicit-constructor)
    using D = std::decay_t<M>;
    if constexpr (std::is_same<D, torch::nn::AnyModule>::value) {
      init_any(module);
    } else if constexpr (torch::detail::is_module_holder<D>::value) {
      init_typed<typename D::ContainedType>(module.ptr());
    } else if constexpr (detail::is_shared_ptr<D>::value) {
      init_typed<typename D::element_type>(module);
    } else {
      static_assert(std::is_rvalue_reference<M&&>::value,
                    "pass a module object by value with std::move, or pass its holder / shared_ptr");
      init_typed<D>(std::make_shared<D>(std::forward<M>(module)));
    }
  }

  /// Runs the loss. kd::Error (kState) when empty.
  LossResult forward(const DistillBatch& batch);

  /// True when the module needs input gradients: it has a `needs_input_grad()`
  /// member that says so, or derives from kd::NeedsInputGrad and says so.
  bool needs_input_grad() const;

  bool is_empty() const noexcept { return module_.is_empty(); }
  /// The module (nullptr when empty).
  std::shared_ptr<torch::nn::Module> ptr() const;
  /// The module as a `torch::nn::AnyModule` (e.g. for kd::Stage).
  const torch::nn::AnyModule& any() const noexcept { return module_; }
  /// A deep copy (the module's `clone()`; user modules must derive from torch::nn::Cloneable).
  AnyLoss clone(const c10::optional<torch::Device>& device = c10::nullopt) const;

  /// The module as `T` (an Impl type), or nullptr when it is something else.
  template <typename T>
  std::shared_ptr<T> as() const {
    return std::dynamic_pointer_cast<T>(ptr());
  }

 private:
  using ForwardFn = LossResult (*)(torch::nn::Module&, const DistillBatch&);
  using NeedsFn = bool (*)(const torch::nn::Module&);

  template <typename T>
  void init_typed(std::shared_ptr<T> impl) {
    using R = typename detail::loss_forward_result<T>::type;
    static_assert(std::is_same<R, LossResult>::value,
                  "a loss module needs `kd::LossResult forward(const kd::DistillBatch&)`");
    module_ = torch::nn::AnyModule(std::move(impl));
    forward_ = [](torch::nn::Module& m, const DistillBatch& b) -> LossResult {
      return dynamic_cast<T&>(m).forward(b);
    };
    if constexpr (detail::has_needs_input_grad<T>::value) {
      needs_ = [](const torch::nn::Module& m) -> bool {
        return static_cast<bool>(dynamic_cast<const T&>(m).needs_input_grad());
      };
    }
  }
  void init_any(torch::nn::AnyModule module);

  torch::nn::AnyModule module_;
  ForwardFn forward_ = nullptr;
  NeedsFn needs_ = nullptr;
};

}  // namespace kd
