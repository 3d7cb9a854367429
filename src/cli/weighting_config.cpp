#include "weighting_config.h"

#include <algorithm>
#include <cmath>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"
#include "kd/core/generators_kept.h"
#include "kd/losses/loss_traits.h"
#include "kd/losses/weighting/reward.h"
#include "kd/losses/weighting/uncertainty.h"
#include "config.h"

namespace kd::app {
namespace {

using json = nlohmann::json;

template <typename E, std::size_t N>
E enum_from_json(const json& v, const EnumNames<E, N>& names, const std::string& origin, const std::string& path) {
  if (v.is_string()) {
    if (const auto e = names.parse(v.get<std::string>())) return *e;
  }
  config_error(origin, path, fmt::format("must be one of {}, got {}", fmt::join(names.names(), ", "), v.dump()));
}

double number_in(const json& w, const char* key, double fallback, double lo, double hi, bool lo_open,
                 const std::string& origin, const std::string& path) {
  if (!w.contains(key)) return fallback;
  const json& v = w[key];
  const bool ok = v.is_number() && std::isfinite(v.get<double>()) && (lo_open ? v.get<double>() > lo : v.get<double>() >= lo) &&
                  v.get<double>() <= hi;
  if (!ok) {
    config_error(origin, path + "." + key,
         fmt::format("must be a number in {}{}, {}], got {}", lo_open ? "(" : "[", lo, hi, v.dump()));
  }
  return v.get<double>();
}

}  // namespace

const std::vector<WeightingPolicyName>& weighting_policy_names() {
  static const std::vector<WeightingPolicyName> names = {
      {WeightingPolicyKind::kFixed, "fixed", "each term's own weight (number or schedule); the default"},
      {WeightingPolicyKind::kUncertainty, "uncertainty",
       "learned: sum_k exp(-s_k) L_k + s_k, one log-variance s_k per term (Kendall et al. 2018)"},
      {WeightingPolicyKind::kReward, "reward",
       "REINFORCE on the validation metric: w = S softmax(theta + noise), theta moved after each evaluation"},
      {WeightingPolicyKind::kMinNorm, "min_norm",
       "MGDA: the weights on the simplex whose combined gradient over the shared parameters is shortest"},
      {WeightingPolicyKind::kLayerSimilarity, "layer_similarity",
       "feature terms weighed by teacher/student cosine similarity x a sigmoid prior on the layer"},
  };
  return names;
}

const char* weighting_policy_name(WeightingPolicyKind kind) {
  for (const auto& p : weighting_policy_names()) {
    if (p.kind == kind) return p.name;
  }
  throw Error(ErrorCategory::kState, "weighting_policy_name: a WeightingPolicyKind without a name in weighting_policy_names()");
}

json weighting_defaults(WeightingPolicyKind policy) {
  const WeightingConfig d;
  const auto& s = d.similarity.similarity();
  switch (policy) {
    case WeightingPolicyKind::kFixed: return {{"policy", "fixed"}};
    case WeightingPolicyKind::kUncertainty: return {{"policy", "uncertainty"}, {"init_log_var", d.init_log_var}};
    case WeightingPolicyKind::kReward:
      return {{"policy", "reward"}, {"metric", d.metric}, {"lr", d.lr}, {"noise_std", d.noise_std},
              {"baseline_momentum", d.baseline_momentum}, {"scale", d.scale}};
    case WeightingPolicyKind::kMinNorm:
      return {{"policy", "min_norm"}, {"shared", json::array()}, {"solver", kMinNormSolverNames.name(d.solver)}};
    case WeightingPolicyKind::kLayerSimilarity:
      return {{"policy", "layer_similarity"}, {"slope", s.slope()}, {"midpoint", s.midpoint()},
              {"clamp_negative", s.clamp_negative()}, {"normalize", kLayerWeightNormNames.name(s.normalize())}, {"layers", json::object()}};
  }
  return json::object();
}

namespace {

// Resolves w["policy"] and refuses any key that policy does not take, before any value is read.
WeightingPolicyKind policy_of(const json& w, const std::string& origin, const std::string& path) {
  std::vector<std::string> policies;
  for (const auto& p : weighting_policy_names()) policies.emplace_back(p.name);
  if (!w.is_object() || !w.contains("policy") || !w["policy"].is_string()) {
    config_error(origin, path,
         fmt::format("must be an object with a \"policy\" ({}), e.g. {{\"policy\": \"uncertainty\"}}; got {}",
                     fmt::join(policies, ", "), w.dump()));
  }
  const std::string name = w["policy"];
  const auto it = std::find_if(weighting_policy_names().begin(), weighting_policy_names().end(),
                               [&](const WeightingPolicyName& p) { return name == p.name; });
  if (it == weighting_policy_names().end()) {
    const auto best = closest_name(name, policies);
    config_error(origin, path + ".policy",
         fmt::format("is \"{}\"; {}a weighting policy is one of: {}", name,
                     best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(policies, ", ")));
  }
  const json keys = weighting_defaults(it->kind);
  std::vector<std::string> allowed;
  for (const auto& [k, _] : keys.items()) allowed.push_back(k);
  for (const auto& [k, v] : w.items()) {
    if (!keys.contains(k)) {
      const auto best = closest_name(k, allowed);
      config_error(origin, path + "." + k,
           fmt::format("is not a key of the {} policy; {}allowed: {}", name,
                       best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(allowed, ", ")));
    }
  }
  return it->kind;
}

void parse_reward(const json& stage, const json& w, WeightingConfig& c, const std::string& origin,
                  const std::string& path, const std::string& stage_path) {
  if (w.contains("metric") && !w["metric"].is_string()) {
    config_error(origin, path + ".metric", fmt::format("must be a validation score's name (\"\": evaluation.best_metric), got {}",
                                               w["metric"].dump()));
  }
  c.metric = w.value("metric", c.metric);
  c.lr = number_in(w, "lr", c.lr, 0, 100, true, origin, path);
  c.noise_std = number_in(w, "noise_std", c.noise_std, 0, 100, true, origin, path);
  c.baseline_momentum = number_in(w, "baseline_momentum", c.baseline_momentum, 0, 0.999999, false, origin, path);
  c.scale = number_in(w, "scale", c.scale, 0, 1e6, false, origin, path);
  const json every = stage.value("eval_every", json(0));
  if (!every.is_number_integer() || every.get<int64_t>() <= 0) {
    config_error(origin, path + ".policy",
         fmt::format("is \"reward\", which learns from the stage's validation evaluations: give {} an "
                     "\"eval_every\" (e.g. 100 steps), so that it has more than the one at the stage's end",
                     stage_path));
  }
}

void parse_min_norm(const json& w, WeightingConfig& c, const std::string& origin, const std::string& path) {
  const json shared = w.value("shared", json::array());
  if (!shared.is_array() || !std::all_of(shared.begin(), shared.end(), [](const json& x) { return x.is_string(); })) {
    config_error(origin, path + ".shared",
         fmt::format("must be a list of regexes over student parameter names (empty: all), got {}", shared.dump()));
  }
  for (size_t i = 0; i < shared.size(); ++i) {
    try {
      std::regex(shared[i].get<std::string>());
    } catch (const std::regex_error& e) {
      config_error(origin, fmt::format("{}.shared[{}]", path, i), fmt::format("is not a regex: {}", e.what()));
    }
  }
  c.shared = shared.get<std::vector<std::string>>();
  if (w.contains("solver")) c.solver = enum_from_json(w["solver"], kMinNormSolverNames, origin, path + ".solver");
}

// The "layers" object: each named term must be one of the stage's, with an integer [teacher, student] pair.
TermLayers parse_layers(const json& w, const std::vector<std::string>& term_names, const std::string& origin,
                        const std::string& path) {
  TermLayers layers;
  const json given = w.value("layers", json::object());
  if (!given.is_object()) {
    config_error(origin, path + ".layers",
         fmt::format("must be an object {{\"term\": [teacher_layer, student_layer]}}, got {}", given.dump()));
  }
  for (const auto& [term, pair] : given.items()) {
    const std::string here = path + ".layers." + term;
    if (std::find(term_names.begin(), term_names.end(), term) == term_names.end()) {
      config_error(origin, here, fmt::format("is not a term of the stage; its terms: {}", fmt::join(term_names, ", ")));
    }
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() || !pair[1].is_number_integer()) {
      config_error(origin, here,
           fmt::format("must be [teacher_layer, student_layer] (hidden-state indices; negative count from the end), "
                       "got {}",
                       pair.dump()));
    }
    LayerPair p;
    p.teacher = pair[0].get<int64_t>();
    p.student = pair[1].get<int64_t>();
    layers[term] = p;
  }
  return layers;
}

void parse_layer_similarity(const json& w, const std::vector<LossSpec>& terms, WeightingConfig& c,
                            const std::string& origin, const std::string& path) {
  std::vector<std::string> term_names;
  for (const auto& t : terms) term_names.push_back(t.term_name());
  auto s = c.similarity.similarity();
  s.slope(number_in(w, "slope", s.slope(), -100, 100, false, origin, path));
  s.midpoint(number_in(w, "midpoint", s.midpoint(), -1000, 1000, false, origin, path));
  if (w.contains("clamp_negative")) {
    if (!w["clamp_negative"].is_boolean()) {
      config_error(origin, path + ".clamp_negative", fmt::format("must be true or false, got {}", w["clamp_negative"].dump()));
    }
    s.clamp_negative(w["clamp_negative"].get<bool>());
  }
  if (w.contains("normalize")) s.normalize(enum_from_json(w["normalize"], kLayerWeightNormNames, origin, path + ".normalize"));
  c.similarity.similarity(s);
  const TermLayers layers = parse_layers(w, term_names, origin, path);
  c.similarity.layers(layers);
  // A term is weighed when its loss shows the features it compares (feature_l2) or `layers` names it.
  // Making a loss draws its projections' initial weights: the run's random stream must not notice.
  const GeneratorsKept kept;
  const bool weighs_some = std::any_of(terms.begin(), terms.end(), [&](const LossSpec& t) {
    if (layers.count(t.term_name())) return true;
    const auto module = LossRegistry::global().create(t).ptr();
    return dynamic_cast<const LayerFeatureSource*>(module.get()) != nullptr;
  });
  if (!weighs_some) {
    config_error(origin, path + ".policy",
         fmt::format("is \"layer_similarity\", which weighs feature terms, but none of the stage's terms ({}) is "
                     "one: add a feature_l2 term, or name a term's hidden states in \"layers\": "
                     "{{\"{}\": [teacher_layer, student_layer]}}",
                     fmt::join(term_names, ", "), term_names.front()));
  }
}

}  // namespace

WeightingConfig stage_weighting(const json& stage, const std::vector<LossSpec>& terms, const std::string& origin,
                                const std::string& stage_path) {
  WeightingConfig c;
  if (!stage.contains("weighting")) return c;
  const json& w = stage["weighting"];
  const std::string path = stage_path + ".weighting";
  c.policy = policy_of(w, origin, path);
  switch (c.policy) {
    case WeightingPolicyKind::kFixed: break;
    case WeightingPolicyKind::kUncertainty:
      c.init_log_var = number_in(w, "init_log_var", c.init_log_var, -20, 20, false, origin, path);
      break;
    case WeightingPolicyKind::kReward: parse_reward(stage, w, c, origin, path, stage_path); break;
    case WeightingPolicyKind::kMinNorm: parse_min_norm(w, c, origin, path); break;
    case WeightingPolicyKind::kLayerSimilarity: parse_layer_similarity(w, terms, c, origin, path); break;
  }
  return c;
}

MadeWeighting make_weighting(const WeightingConfig& c, int64_t num_terms, const std::string& stage_name,
                             Model& student, const std::string& metric, bool higher_is_better) {
  MadeWeighting made;
  switch (c.policy) {
    case WeightingPolicyKind::kFixed: break;
    case WeightingPolicyKind::kUncertainty:
      made.policy = UncertaintyWeighting(UncertaintyWeightingOptions(num_terms).init_log_var(c.init_log_var));
      break;
    case WeightingPolicyKind::kReward: {
      // One action lasts until the evaluation that judges it: the weights of all the steps since the last one.
      RewardWeighting policy(RewardWeightingOptions(num_terms)
                                 .lr(c.lr)
                                 .noise_std(c.noise_std)
                                 .baseline_momentum(c.baseline_momentum)
                                 .scale(c.scale)
                                 .hold_action(true));
      made.policy = policy;
      made.feedback = std::make_shared<RewardFeedback>(
          policy, RewardFeedbackOptions(metric).scale(higher_is_better ? 1.0 : -1.0).stage(stage_name));
      break;
    }
    case WeightingPolicyKind::kMinNorm: {
      std::vector<std::regex> patterns;
      for (const auto& p : c.shared) patterns.emplace_back(p);
      std::vector<torch::Tensor> shared;
      for (const auto& item : student.named_parameters()) {
        const bool picked = patterns.empty() || std::any_of(patterns.begin(), patterns.end(), [&](const std::regex& re) {
                              return std::regex_search(item.key(), re);
                            });
        if (picked) shared.push_back(item.value());
      }
      if (shared.empty()) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("stage '{}': weighting.shared [{}] matches none of the student's parameters",
                                stage_name, fmt::join(c.shared, ", ")));
      }
      made.policy = MinNormWeighting(MinNormWeightingOptions(shared).solver(c.solver));
      break;
    }
    case WeightingPolicyKind::kLayerSimilarity: made.policy = LayerSimilarityPolicy(c.similarity); break;
  }
  return made;
}

}  // namespace kd::app
