#include "kd/losses/registry.h"

#include <algorithm>
#include <utility>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/hard_label_ce.h"
#include "kd/losses/dkd.h"
#include "kd/losses/temperature_kl.h"
#include "kd/losses/weighting/layer_similarity.h"

namespace kd {

// ------------------------------------------------------------------ names

namespace {

std::string did_you_mean(const std::string& name, const std::vector<std::string>& candidates) {
  const auto best = closest_name(name, candidates);
  return best.empty() ? std::string() : fmt::format(" Did you mean '{}'?", best);
}

const char* type_name(const LossSpec::Value& v) {
  switch (v.index()) {
    case 0: return "a number";
    case 1: return "a boolean";
    case 2: return "a string";
    default: return "a list of numbers";
  }
}

std::string show(const LossSpec::Value& v) {
  if (const auto* d = std::get_if<double>(&v)) return fmt::format("{}", *d);
  if (const auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (const auto* s = std::get_if<std::string>(&v)) return fmt::format("\"{}\"", *s);
  return fmt::format("[{}]", fmt::join(std::get<std::vector<double>>(v), ", "));
}

bool is_integer(double d) { return std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e15; }

}  // namespace

// ------------------------------------------------------------------ LossSpec

LossSpec& LossSpec::set(const std::string& key, bool value) {
  values_[key] = value;
  return *this;
}
LossSpec& LossSpec::set(const std::string& key, const char* value) {
  values_[key] = std::string(value);
  return *this;
}
LossSpec& LossSpec::set(const std::string& key, std::string value) {
  values_[key] = std::move(value);
  return *this;
}
LossSpec& LossSpec::set(const std::string& key, std::vector<double> value) {
  values_[key] = std::move(value);
  return *this;
}

std::vector<std::string> LossSpec::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : values_) out.push_back(kv.first);
  return out;
}

void LossSpec::fail(const std::string& key, const std::string& problem) const {
  std::string msg = fmt::format("loss spec '{}'", type_);
  if (!name_.empty() && name_ != type_) msg += fmt::format(" (term '{}')", name_);
  msg += fmt::format(": {}", problem);
  if (!allowed_keys_.empty()) msg += fmt::format("; allowed keys: {}", fmt::join(allowed_keys_, ", "));
  throw Error(ErrorCategory::kConfig, msg);
}

const LossSpec::Value* LossSpec::find(const std::string& key, const char* expected) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return nullptr;
  const auto& v = it->second;
  const bool ok = (std::string(expected) == "a number" && v.index() == 0) ||
                  (std::string(expected) == "a boolean" && v.index() == 1) ||
                  (std::string(expected) == "a string" && v.index() == 2) ||
                  (std::string(expected) == "a list of numbers" && v.index() == 3);
  if (!ok) fail(key, fmt::format("key '{}' must be {}, got {} ({})", key, expected, type_name(v), show(v)));
  return &v;
}

double LossSpec::number(const std::string& key) const {
  const auto* v = find(key, "a number");
  if (!v) fail(key, fmt::format("missing required key '{}' (a number)", key));
  return std::get<double>(*v);
}
double LossSpec::number(const std::string& key, double fallback) const {
  const auto* v = find(key, "a number");
  return v ? std::get<double>(*v) : fallback;
}
int64_t LossSpec::integer(const std::string& key) const {
  const auto* v = find(key, "a number");
  if (!v) fail(key, fmt::format("missing required key '{}' (an integer)", key));
  const double d = std::get<double>(*v);
  if (!is_integer(d)) fail(key, fmt::format("key '{}' must be an integer, got {}", key, d));
  return static_cast<int64_t>(d);
}
int64_t LossSpec::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}
bool LossSpec::boolean(const std::string& key) const {
  const auto* v = find(key, "a boolean");
  if (!v) fail(key, fmt::format("missing required key '{}' (a boolean)", key));
  return std::get<bool>(*v);
}
bool LossSpec::boolean(const std::string& key, bool fallback) const {
  const auto* v = find(key, "a boolean");
  return v ? std::get<bool>(*v) : fallback;
}
std::string LossSpec::string(const std::string& key) const {
  const auto* v = find(key, "a string");
  if (!v) fail(key, fmt::format("missing required key '{}' (a string)", key));
  return std::get<std::string>(*v);
}
std::string LossSpec::string(const std::string& key, const std::string& fallback) const {
  const auto* v = find(key, "a string");
  return v ? std::get<std::string>(*v) : fallback;
}
std::vector<double> LossSpec::numbers(const std::string& key) const {
  const auto* v = find(key, "a list of numbers");
  if (!v) fail(key, fmt::format("missing required key '{}' (a list of numbers)", key));
  return std::get<std::vector<double>>(*v);
}
std::vector<double> LossSpec::numbers(const std::string& key, const std::vector<double>& fallback) const {
  const auto* v = find(key, "a list of numbers");
  return v ? std::get<std::vector<double>>(*v) : fallback;
}
std::vector<int64_t> LossSpec::integers(const std::string& key) const {
  std::vector<int64_t> out;
  for (double d : numbers(key)) {
    if (!is_integer(d)) fail(key, fmt::format("key '{}' must be a list of integers, got {}", key, d));
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}
std::vector<int64_t> LossSpec::integers(const std::string& key, const std::vector<int64_t>& fallback) const {
  return has(key) ? integers(key) : fallback;
}
std::string LossSpec::choice(const std::string& key, const std::vector<std::string>& allowed,
                             const std::string& fallback) const {
  const auto s = string(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
    fail(key, fmt::format("key '{}' must be one of \"{}\", got \"{}\".{}", key, fmt::join(allowed, "\", \""), s,
                          did_you_mean(s, allowed)));
  }
  return s;
}

// ------------------------------------------------------------------ LossRegistry

LossRegistry& LossRegistry::global() {
  static LossRegistry* registry = [] {
    auto* r = new LossRegistry();  // never destroyed: static destructors may still look up losses
    r->add_builtins();
    return r;
  }();
  return *registry;
}

bool LossRegistry::add(const std::string& type, LossFactory factory, std::vector<std::string> keys,
                       std::string description, LossNeeds needs) {
  if (type.empty()) throw Error(ErrorCategory::kConfig, "LossRegistry::add: the loss type name is empty");
  if (!factory) throw Error(ErrorCategory::kConfig, fmt::format("LossRegistry::add('{}'): the factory is empty", type));
  if (contains(type)) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("LossRegistry::add: a loss named '{}' is already registered; pick another name or "
                            "remove() it first",
                            type));
  }
  std::sort(keys.begin(), keys.end());
  entries_[type] = Entry{std::move(factory), std::move(keys), std::move(description), needs};
  return true;
}

bool LossRegistry::add_static(const std::string& type, LossFactory factory, std::vector<std::string> keys,
                              std::string description, LossNeeds needs) noexcept {
  try {
    add(type, std::move(factory), std::move(keys), std::move(description), needs);
  } catch (const std::exception& e) {
    try {
      static_errors_.push_back(e.what());
    } catch (...) {  // out of memory while keeping the message: the registration is still refused
    }
  }
  return true;
}

std::vector<std::string> LossRegistry::take_static_errors() { return std::exchange(static_errors_, {}); }

bool LossRegistry::remove(const std::string& type) { return entries_.erase(type) > 0; }

std::vector<std::string> LossRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const LossRegistry::Entry& LossRegistry::entry(const std::string& type) const {
  const auto it = entries_.find(type);
  if (it == entries_.end()) {
    const auto all = names();
    throw Error(ErrorCategory::kConfig,
                fmt::format("unknown loss type '{}'.{} Registered loss types: {}", type, did_you_mean(type, all),
                            all.empty() ? std::string("(none)") : fmt::format("{}", fmt::join(all, ", "))));
  }
  return it->second;
}

const std::vector<std::string>& LossRegistry::keys(const std::string& type) const { return entry(type).keys; }
const std::string& LossRegistry::description(const std::string& type) const { return entry(type).description; }
const LossNeeds& LossRegistry::needs(const std::string& type) const { return entry(type).needs; }

AnyLoss LossRegistry::create(const LossSpec& spec) const {
  const Entry& e = entry(spec.type());
  LossSpec checked = spec;
  checked.allowed_keys(e.keys);
  if (!e.keys.empty()) {
    for (const auto& key : spec.keys()) {
      if (!std::binary_search(e.keys.begin(), e.keys.end(), key)) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("loss spec '{}': unknown key '{}'.{} Allowed keys: {}", spec.type(), key,
                                did_you_mean(key, e.keys), fmt::join(e.keys, ", ")));
      }
    }
  }
  const auto context = [&] {
    return spec.name().empty() || spec.name() == spec.type()
               ? fmt::format("loss spec '{}'", spec.type())
               : fmt::format("loss spec '{}' (term '{}')", spec.type(), spec.name());
  };
  AnyLoss loss;
  try {
    loss = e.factory(checked);
  } catch (const Error& ex) {
    const std::string what = ex.message();
    if (what.rfind("loss spec '", 0) == 0) throw;
    throw Error(ex.category(), fmt::format("{}: {}", context(), what));
  } catch (const c10::Error& ex) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("{}: the factory failed: {}", context(), ex.what_without_backtrace()));
  } catch (const std::exception& ex) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the factory failed: {}", context(), ex.what()));
  }
  if (loss.is_empty()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the factory returned an empty loss", context()));
  }
  return loss;
}

WeightedTerm LossRegistry::term(const LossSpec& spec) const {
  return WeightedTerm(spec.term_name(), create(spec), spec.weight());
}

WeightedSum LossRegistry::sum(const std::vector<LossSpec>& specs, AnyWeighting weighting) const {
  std::vector<WeightedTerm> terms;
  for (const auto& s : specs) terms.push_back(term(s));
  return WeightedSum(std::move(terms), std::move(weighting));
}

// ------------------------------------------------------------------ built-ins

namespace {

std::vector<LayerPair> pairs_from(const LossSpec& s, const std::vector<int64_t>& default_layers, bool dims) {
  // FeatureL2 has no default pair: then both lists are required.
  const auto tl = default_layers.empty() ? s.integers("teacher_layers") : s.integers("teacher_layers", default_layers);
  const auto sl = default_layers.empty() ? s.integers("student_layers") : s.integers("student_layers", default_layers);
  if (tl.empty() || tl.size() != sl.size()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("loss spec '{}': teacher_layers ({} values) and student_layers ({} values) must be "
                            "non-empty and equally long (pair i = teacher_layers[i] with student_layers[i])",
                            s.type(), tl.size(), sl.size()));
  }
  const auto w = s.numbers("pair_weights", std::vector<double>(tl.size(), 1.0));
  const auto sd = dims ? s.integers("student_dims", std::vector<int64_t>(tl.size(), 0)) : std::vector<int64_t>(tl.size());
  const auto td = dims ? s.integers("teacher_dims", std::vector<int64_t>(tl.size(), 0)) : std::vector<int64_t>(tl.size());
  for (const auto& [key, n] : {std::pair<const char*, size_t>{"pair_weights", w.size()},
                               {"student_dims", sd.size()},
                               {"teacher_dims", td.size()}}) {
    if (n != tl.size()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("loss spec '{}': {} has {} values but there are {} layer pairs", s.type(), key, n,
                              tl.size()));
    }
  }
  std::vector<LayerPair> pairs;
  for (size_t i = 0; i < tl.size(); ++i) pairs.push_back(LayerPair{tl[i], sl[i], w[i], sd[i], td[i]});
  return pairs;
}

// Logit-level losses: they compare the teacher's and student's output distributions (or the targets).
void add_logit_losses(LossRegistry& r) {
  r.add(
      "temperature_kl",
      [](const LossSpec& s) {
        const TemperatureKLOptions defaults;
        auto options = TemperatureKLOptions()
                           .temperature(s.number("temperature", defaults.temperature()))
                           .mode(s.choice("mode", kKLModeNames, defaults.mode()))
                           .beta(s.number("beta", defaults.beta()))
                           .ignore_index(s.integer("ignore_index", *defaults.ignore_index()))
                           .chunk_size(s.integer("chunk_size", defaults.chunk_size()))
                           .standardize(s.boolean("standardize", defaults.standardize()));
        if (s.has("temperature_end")) {
          options.temperature_schedule(Schedule::linear(options.temperature(), s.number("temperature_end")));
        }
        return TemperatureKL(options);
      },
      {"temperature", "temperature_end", "mode", "beta", "ignore_index", "chunk_size", "standardize"},
      "soft-target divergence on the logits at temperature T (forward KL(p_t || p_s)·T², reverse KL, or JSD(beta)); "
      "standardize: z-scored logits");

  r.add(
      "dkd",
      [](const LossSpec& s) {
        const DKDOptions defaults;
        return DKD(DKDOptions()
                       .alpha(s.number("alpha", defaults.alpha()))
                       .beta(s.number("beta", defaults.beta()))
                       .temperature(s.number("temperature", defaults.temperature()))
                       .warmup(s.number("warmup", defaults.warmup()))
                       .standardize(s.boolean("standardize", defaults.standardize()))
                       .ignore_index(s.integer("ignore_index", *defaults.ignore_index())));
      },
      {"alpha", "beta", "temperature", "warmup", "standardize", "ignore_index"},
      "decoupled KD: alpha·TCKD + beta·NCKD at temperature T, needs targets (Zhao et al. 2022)");

  r.add(
      "hard_label_ce",
      [](const LossSpec& s) {
        const HardLabelCEOptions defaults;
        return HardLabelCE(HardLabelCEOptions()
                               .label_smoothing(s.number("label_smoothing", defaults.label_smoothing()))
                               .ignore_index(s.integer("ignore_index", defaults.ignore_index())));
      },
      {"label_smoothing", "ignore_index"}, "cross-entropy of the student's logits against the targets",
      LossNeeds().teacher(false));
}

// Hidden-state losses: they read matched teacher/student layers, so they share pairs_from().
void add_layer_losses(LossRegistry& r) {
  r.add(
      "feature_l2",
      [](const LossSpec& s) {
        FeatureL2Options o(pairs_from(s, {}, /*dims=*/true));
        o.init(s.choice("init", kProjectionInitNames, o.init()));
        o.normalize(s.choice("normalize", kFeatureNormNames, o.normalize()));
        o.spatial_mismatch(s.choice("spatial_mismatch", kSpatialMismatchNames, o.spatial_mismatch()));
        if (s.choice("pair_weighting", {"none", "layer_similarity"}, "none") == "layer_similarity") {
          const LayerSimilarityWeightingOptions defaults;
          o.pair_weighting(LayerSimilarityWeighting(
              LayerSimilarityWeightingOptions()
                  .slope(s.number("similarity_slope", defaults.slope()))
                  .midpoint(s.number("similarity_midpoint", defaults.midpoint()))
                  .normalize(s.choice("similarity_normalize", kLayerWeightNormNames, defaults.normalize()))));
        }
        return FeatureL2(o);
      },
      {"teacher_layers", "student_layers", "pair_weights", "student_dims", "teacher_dims", "init", "normalize",
       "spatial_mismatch", "pair_weighting", "similarity_slope", "similarity_midpoint", "similarity_normalize"},
      "L2 (MSE) between matched teacher and student hidden states, with learned projections",
      LossNeeds().teacher_hidden_states(true));

  r.add(
      "attention_mse",
      [](const LossSpec& s) {
        AttentionMSEOptions o(pairs_from(s, {-1}, /*dims=*/false));
        o.heads(s.choice("heads", kHeadMappingNames, o.heads()));
        o.log_space(s.boolean("log_space", o.log_space()));
        o.eps(s.number("eps", o.eps()));
        o.reduction(s.choice("reduction", kAttentionReductionNames, o.reduction()));
        return AttentionMSE(o);
      },
      {"teacher_layers", "student_layers", "pair_weights", "heads", "log_space", "eps", "reduction"},
      "MSE between matched teacher and student attention maps", LossNeeds().teacher_attentions(true));
}

void add_gradient_losses(LossRegistry& r) {
  r.add(
      "gradient_matching",
      [](const LossSpec& s) {
        GradientMatchingOptions o;
        if (s.has("lambda")) {
          if (s.has("lambda_start") || s.has("lambda_end") || s.has("lambda_schedule")) {
            throw Error(ErrorCategory::kConfig,
                        "loss spec 'gradient_matching': give either 'lambda' (a constant) or "
                        "'lambda_start'/'lambda_end'/'lambda_schedule', not both");
          }
          o.lambda(Schedule::constant(s.number("lambda")));
        } else {
          const double a = s.number("lambda_start", o.lambda().start()), b = s.number("lambda_end", o.lambda().end());
          o.lambda(Schedule::ramp(s.choice("lambda_schedule", kRampKindNames, Schedule::Kind::kLinear), a, b));
        }
        o.temperature(s.number("temperature", o.temperature()));
        o.input_key(s.string("input_key", o.input_key()));
        o.space(s.choice("space", kGradientSpaceNames, o.space()));
        o.ignore_index(s.integer("ignore_index", o.ignore_index()));
        o.distance(s.choice("distance", kGradientDistanceNames, o.distance()));
        return GradientMatching(o);
      },
      {"lambda", "lambda_start", "lambda_end", "lambda_schedule", "temperature", "input_key", "space",
       "ignore_index", "distance"},
      "R1: λ·D(g_s, g_t) + (1−λ)·KL(p_t || p_s), g = ∂ task loss / ∂ inputs, D = MSE or (\"distance\": "
      "\"cosine\") a scale-free 1 − cos");
}

}  // namespace

void LossRegistry::add_builtins() {
  add_logit_losses(*this);
  add_layer_losses(*this);
  add_gradient_losses(*this);
}

}  // namespace kd
