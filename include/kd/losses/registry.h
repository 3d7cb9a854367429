#pragma once
/// \file
/// Loss modules by name: typed specs, factories, built-ins and user-registered losses.

#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <torch/arg.h>

#include "kd/core/enum_names.h"
#include "kd/losses/any_loss.h"
#include "kd/losses/schedule.h"
#include "kd/losses/weighted_sum.h"

namespace kd {

/// What a registered loss type reads besides the student's outputs, declared at registration so that whoever
/// runs it can plan before building it: whether the teacher runs at all, which teacher layers a teacher cache
/// must keep, and whether the cache's one mixture of an ensemble's logits serves it. Losses registered without
/// it read the teacher's logits.
///
/// Example: `reg.add("ce_only", factory, {}, "targets only", kd::LossNeeds().teacher(false));`
struct LossNeeds {
  /// The teacher's outputs; false for a loss of the targets alone (hard_label_ce), whose stages run no teacher.
  TORCH_ARG(bool, teacher) = true;
  /// Each ensemble member's logits (teacher_mixture_kl), which a teacher cache does not keep.
  TORCH_ARG(bool, each_teacher) = false;
  /// The teacher's hidden states at the layers its spec's "teacher_layers" lists (feature_l2).
  TORCH_ARG(bool, teacher_hidden_states) = false;
  /// The teacher's attention maps at the layers its spec's "teacher_layers" lists (attention_mse).
  TORCH_ARG(bool, teacher_attentions) = false;
};

/// A loss described as data: its registered `type`, the term `name` and
/// `weight` it takes in a WeightedSum, and typed options by key. The
/// library never parses text here; the app layer turns JSON or CLI flags into
/// specs.
///
/// Values are numbers (double; integers are numbers with no fractional
/// part), booleans, strings, or lists of numbers. Getters throw kd::Error
/// (kConfig) naming the loss, the key, what was expected and what was found,
/// and — when the registry knows them — the keys the loss accepts.
///
/// Example:
/// ```
/// auto spec = kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0);
/// double T = spec.number("temperature", 4.0);
/// ```
class LossSpec {
 public:
  using Value = std::variant<double, bool, std::string, std::vector<double>>;

  LossSpec() = default;
  /* implicit */ LossSpec(std::string type) : type_(std::move(type)) {}  // NOLINT
  /* implicit */ LossSpec(const char* type) : type_(type) {}              // NOLINT

  /// The registered loss type, e.g. "temperature_kl".
  TORCH_ARG(std::string, type);
  /// The term's name in a WeightedSum; empty means `type`.
  TORCH_ARG(std::string, name) = "";
  /// The term's weight (a constant or a schedule of progress); default 1.
  TORCH_ARG(Schedule, weight) = Schedule::constant(1.0);

 public:  // TORCH_ARG leaves the section private
  /// Constant weight shorthand.
  LossSpec& weight(double w) {
    weight_ = Schedule::constant(w);
    return *this;
  }

  /// Sets a value (numbers of any arithmetic type, bool, strings, lists of numbers).
  template <typename T, std::enable_if_t<std::is_arithmetic<T>::value && !std::is_same<T, bool>::value, int> = 0>
  LossSpec& set(const std::string& key, T value) {
    values_[key] = static_cast<double>(value);
    return *this;
  }
  LossSpec& set(const std::string& key, bool value);
  LossSpec& set(const std::string& key, const char* value);
  LossSpec& set(const std::string& key, std::string value);
  LossSpec& set(const std::string& key, std::vector<double> value);

  /// The term name: `name` if set, else `type`.
  std::string term_name() const { return name_.empty() ? type_ : name_; }
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  /// All keys set, sorted.
  std::vector<std::string> keys() const;
  const std::map<std::string, Value>& values() const noexcept { return values_; }

  /// Required / defaulted getters. integer() rejects fractional numbers.
  double number(const std::string& key) const;
  double number(const std::string& key, double fallback) const;
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  bool boolean(const std::string& key) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::vector<double> numbers(const std::string& key) const;
  std::vector<double> numbers(const std::string& key, const std::vector<double>& fallback) const;
  std::vector<int64_t> integers(const std::string& key) const;
  std::vector<int64_t> integers(const std::string& key, const std::vector<int64_t>& fallback) const;
  /// A string that must be one of `allowed` (kd::Error listing them otherwise).
  std::string choice(const std::string& key, const std::vector<std::string>& allowed,
                     const std::string& fallback) const;
  /// choice() over the names an enum's table gives (kd::EnumNames), as the enum value; `fallback` when unset.
  /// Example: `o.mode(spec.choice("mode", kd::kKLModeNames, o.mode()));`
  template <typename E, std::size_t N>
  E choice(const std::string& key, const EnumNames<E, N>& names, E fallback) const {
    return *names.parse(choice(key, names.names(), names.name(fallback)));
  }

  /// Keys the loss type accepts (set by LossRegistry before calling a factory;
  /// listed in error messages). Empty means unknown.
  const std::vector<std::string>& allowed_keys() const noexcept { return allowed_keys_; }
  LossSpec& allowed_keys(std::vector<std::string> keys) {
    allowed_keys_ = std::move(keys);
    return *this;
  }

 private:
  const Value* find(const std::string& key, const char* expected) const;
  [[noreturn]] void fail(const std::string& key, const std::string& problem) const;

  std::map<std::string, Value> values_;
  std::vector<std::string> allowed_keys_;
};

/// Makes a loss from a spec. Return any module (holder, shared_ptr, or
/// torch::nn::AnyModule) with `kd::LossResult forward(const kd::DistillBatch&)`.
using LossFactory = std::function<AnyLoss(const LossSpec&)>;

/// Name → factory table. The global one holds the built-ins:
///
/// | type                | keys |
/// |---------------------|------|
/// | "temperature_kl"    | temperature (number, 4); temperature_end (number; when set T goes linearly from temperature to it over the stage); mode ("forward", "reverse", "jsd"); beta (number, 0.5); ignore_index (integer, −100); chunk_size (integer, 64) |
/// | "hard_label_ce"     | label_smoothing (number, 0), ignore_index (integer, −100) |
/// | "feature_l2"        | teacher_layers, student_layers (integer lists, required, same length); pair_weights, student_dims, teacher_dims (lists); init ("default", "xavier", "orthogonal", "identity"); normalize ("none", "l2", "standardize"); spatial_mismatch ("error", "adaptive_pool"); pair_weighting ("none", "layer_similarity"); similarity_slope (0.5), similarity_midpoint (6), similarity_normalize ("sum_to_count", "none") |
/// | "attention_mse"     | teacher_layers, student_layers (integer lists, default [−1]); pair_weights (list); heads ("grouped", "mean"); log_space (bool, false); eps (number, 1e-8) |
/// | "gradient_matching" | lambda (number: constant λ) or lambda_start (0.8) / lambda_end (0.3) with lambda_schedule ("linear", "cosine"); temperature (1); input_key (string, ""); space ("auto", "raw", "position_norm"); ignore_index (−100) |
///
/// create() rejects keys a loss does not accept (when its keys were given at
/// registration), naming the closest allowed one. Registration is not
/// synchronised: register at start-up (static initialisation or early in
/// main), before threads create losses.
///
/// Example:
/// ```
/// KD_REGISTER_LOSS("cosine", [](const kd::LossSpec& s) { return CosineLoss(s.number("scale", 1.0)); }, {"scale"});
/// auto& reg = kd::LossRegistry::global();
/// kd::WeightedSum total = reg.sum({kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0),
///                                  kd::LossSpec("cosine").weight(0.2)});
/// for (const auto& n : reg.names()) std::cout << n << "\n";   // kd-train list
/// ```
class LossRegistry {
 public:
  /// An empty registry (see global() for the built-ins).
  LossRegistry() = default;
  /// The process-wide registry, with the built-ins registered.
  static LossRegistry& global();
  /// Registers the built-ins above into this registry.
  void add_builtins();

  /// Registers `type` (non-empty; kd::Error kConfig if already registered).
  /// `keys`: the keys its specs may carry (empty: any, unchecked).
  /// Returns true, so it can initialise a static (see KD_REGISTER_LOSS).
  bool add(const std::string& type, LossFactory factory, std::vector<std::string> keys = {},
           std::string description = "", LossNeeds needs = {});
  /// add() for static initialisation (KD_REGISTER_LOSS), where an exception would end the process: a
  /// registration add() refuses is kept, to be taken with take_static_errors(), and nothing is registered.
  bool add_static(const std::string& type, LossFactory factory, std::vector<std::string> keys = {},
                  std::string description = "", LossNeeds needs = {}) noexcept;
  /// The messages of the registrations add_static() refused since the last call (e.g. a plugin's loss whose
  /// name is already taken), oldest first.
  std::vector<std::string> take_static_errors();
  /// Removes `type` if present; returns whether it was.
  bool remove(const std::string& type);

  bool contains(const std::string& type) const { return entries_.count(type) > 0; }
  /// Registered types, sorted.
  std::vector<std::string> names() const;
  /// The keys and description given at registration.
  const std::vector<std::string>& keys(const std::string& type) const;
  const std::string& description(const std::string& type) const;
  /// What `type` reads (LossNeeds); kd::Error (kConfig) for a type not registered, as create().
  const LossNeeds& needs(const std::string& type) const;

  /// Makes the loss. kd::Error (kConfig): unknown type (lists the registered
  /// ones and suggests the closest by edit distance), a key the type does not
  /// accept, or a factory's own complaint (prefixed with the type).
  AnyLoss create(const LossSpec& spec) const;
  /// create() as a WeightedSum term: {spec.term_name(), loss, spec.weight()}.
  WeightedTerm term(const LossSpec& spec) const;
  /// A WeightedSum of the specs' terms, optionally under a policy.
  WeightedSum sum(const std::vector<LossSpec>& specs, AnyWeighting weighting = {}) const;

 private:
  struct Entry {
    LossFactory factory;
    std::vector<std::string> keys;
    std::string description;
    LossNeeds needs;
  };
  const Entry& entry(const std::string& type) const;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> static_errors_;
};

}  // namespace kd

#define KD_DETAIL_CONCAT_INNER(a, b) a##b
#define KD_DETAIL_CONCAT(a, b) KD_DETAIL_CONCAT_INNER(a, b)

/// Registers a loss type in kd::LossRegistry::global() at static
/// initialisation, in one line at namespace scope:
///
///   KD_REGISTER_LOSS("my_loss", [](const kd::LossSpec& s) { return MyLoss(s.number("alpha", 0.5)); });
///   KD_REGISTER_LOSS("my_loss", factory, {"alpha"}, "what it does");   // with its accepted keys
/// A name already taken registers nothing; the refusal waits in LossRegistry::take_static_errors() (kd-train
/// reports it and exits 2) instead of ending the process during static initialisation.
#define KD_REGISTER_LOSS(type, ...)                                                          \
  static const bool KD_DETAIL_CONCAT(kd_registered_loss_, __COUNTER__) [[maybe_unused]] = \
      ::kd::LossRegistry::global().add_static(type, __VA_ARGS__)
