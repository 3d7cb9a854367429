#include "stage_config.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"
#include "kd/core/generators_kept.h"
#include "config.h"
#include "config_keys.h"
#include "hook_config.h"
#include "weighting_config.h"

namespace kd::app {
namespace {

using json = nlohmann::json;

// A negative weight would turn a term into a reward for moving away from the teacher (or the labels).
void require_non_negative(double w, const std::string& origin, const std::string& path) {
  if (w < 0) {
    config_error(origin, path, fmt::format("must be >= 0, got {}: a negative weight rewards the term it weights; to drop a term "
                                   "remove it or give it weight 0",
                                   w));
  }
}

Schedule weight_from_json(const json& w, const std::string& origin, const std::string& path) {
  if (w.is_number()) {
    require_non_negative(w.get<double>(), origin, path);
    return Schedule::constant(w.get<double>());
  }
  const std::string kinds = fmt::format("\"{}\"", fmt::join(kRampKindNames.names(), "\" or \""));
  const std::string expected =
      fmt::format("must be a number or {{\"schedule\": {}, \"start\": number, \"end\": number}}", kinds);
  if (!w.is_object()) config_error(origin, path, fmt::format("{}, got {}", expected, w.dump()));
  for (const auto& [k, v] : w.items()) {
    if (k != "schedule" && k != "start" && k != "end") config_error(origin, path + "." + k, "is not a key of a weight schedule; " + std::string(expected));
  }
  if (!w.contains("schedule") || !w["schedule"].is_string() || !w.contains("start") || !w["start"].is_number() ||
      !w.contains("end") || !w["end"].is_number()) {
    config_error(origin, path, fmt::format("{}, got {}", expected, w.dump()));
  }
  const auto kind = kRampKindNames.parse(w["schedule"].get<std::string>());
  const double a = w["start"], b = w["end"];
  require_non_negative(a, origin, path + ".start");
  require_non_negative(b, origin, path + ".end");
  if (kind) return Schedule::ramp(*kind, a, b);
  config_error(origin, path + ".schedule", fmt::format("must be {}, got {}", kinds, w["schedule"].dump()));
}

json weight_to_json(const Schedule& s) {
  switch (s.kind()) {
    case Schedule::Kind::kConstant: return s.start();
    case Schedule::Kind::kLinear:
    case Schedule::Kind::kCosine:
      return {{"schedule", kRampKindNames.name(s.kind())}, {"start", s.start()}, {"end", s.end()}};
    case Schedule::Kind::kStep: break;
  }
  throw Error(ErrorCategory::kConfig, "a step schedule weight cannot be written to a config; use linear or cosine");
}

LossSpec loss_from_json(const json& j, const std::string& origin, const std::string& path) {
  if (!j.is_object()) config_error(origin, path, fmt::format("must be an object with a \"type\", got {}", j.dump()));
  if (!j.contains("type") || !j["type"].is_string()) {
    config_error(origin, path + ".type", "is missing: name the loss, e.g. \"type\": \"temperature_kl\" (kd-train list shows all)");
  }
  LossSpec spec(j["type"].get<std::string>());
  for (const auto& [key, v] : j.items()) {
    const std::string here = path + "." + key;
    if (key == "type") continue;
    if (key == "name") {
      if (!v.is_string()) config_error(origin, here, fmt::format("must be a string, got {}", v.dump()));
      spec.name(v.get<std::string>());
    } else if (key == "weight") {
      spec.weight(weight_from_json(v, origin, here));
    } else if (v.is_boolean()) {
      spec.set(key, v.get<bool>());
    } else if (v.is_number()) {
      spec.set(key, v.get<double>());
    } else if (v.is_string()) {
      spec.set(key, v.get<std::string>());
    } else if (v.is_array() && std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number(); })) {
      spec.set(key, v.get<std::vector<double>>());
    } else {
      config_error(origin, here, fmt::format("must be a number, a boolean, a string or a list of numbers, got {}", v.dump()));
    }
  }
  return spec;
}

json loss_to_json(const LossSpec& s) {
  json j = {{"type", s.type()}};
  if (!s.name().empty()) j["name"] = s.name();
  j["weight"] = weight_to_json(s.weight());
  for (const auto& [key, value] : s.values()) {
    if (const auto* list = std::get_if<std::vector<double>>(&value)) {
      // Layer indices and widths read better as integers.
      json a = json::array();
      for (double x : *list) a.push_back(x == static_cast<double>(static_cast<int64_t>(x)) ? json(static_cast<int64_t>(x)) : json(x));
      j[key] = a;
    } else {
      std::visit([&, k = key](const auto& x) { j[k] = x; }, value);
    }
  }
  return j;
}

// [{"patterns": ["^fc\\."], "lr": 3e-3, "weight_decay": 0}, ...]; weight_decay optional.
std::vector<ParamGroup> param_groups_from_json(const json& groups, const std::string& origin, const std::string& path) {
  const char* expected = "must be a list of {\"patterns\": [regex, ...], \"lr\": number, \"weight_decay\": number (optional)}";
  if (!groups.is_array()) config_error(origin, path, fmt::format("{}, got {}", expected, groups.dump()));
  std::vector<ParamGroup> out;
  for (size_t i = 0; i < groups.size(); ++i) {
    const json& g = groups[i];
    const std::string here = fmt::format("{}[{}]", path, i);
    if (!g.is_object()) config_error(origin, here, fmt::format("{}, got {}", expected, g.dump()));
    for (const auto& [k, v] : g.items()) {
      if (k != "patterns" && k != "lr" && k != "weight_decay") {
        const auto best = closest_name(k, {"patterns", "lr", "weight_decay"});
        config_error(origin, here + "." + k,
             fmt::format("is not a parameter-group key; {}allowed: patterns, lr, weight_decay",
                         best.empty() ? "" : "did you mean '" + best + "'? "));
      }
    }
    const json patterns = g.value("patterns", json());
    if (!patterns.is_array() || patterns.empty() ||
        !std::all_of(patterns.begin(), patterns.end(), [](const json& x) { return x.is_string(); })) {
      config_error(origin, here + ".patterns",
           fmt::format("must be a non-empty list of regexes over parameter names, got {}", patterns.dump()));
    }
    const json lr = g.value("lr", json());
    if (!lr.is_number() || !(lr.get<double>() > 0 && lr.get<double>() <= 10)) {
      config_error(origin, here + ".lr", fmt::format("must be a number in (0, 10], got {}", lr.dump()));
    }
    const json wd = g.value("weight_decay", json(-1.0));
    if (!wd.is_number() || !(wd.get<double>() >= 0 || wd.get<double>() == -1) || wd.get<double>() > 10) {
      config_error(origin, here + ".weight_decay",
           fmt::format("must be a number in [0, 10] (or -1: train.weight_decay), got {}", wd.dump()));
    }
    out.push_back(ParamGroup{patterns.get<std::vector<std::string>>(), lr.get<double>(), wd.get<double>()});
  }
  return out;
}

json param_groups_to_json(const std::vector<ParamGroup>& groups) {
  json out = json::array();
  for (const auto& g : groups) out.push_back({{"patterns", g.patterns}, {"lr", g.lr}, {"weight_decay", g.weight_decay}});
  return out;
}

}  // namespace

const std::vector<std::string>& known_hooks() {
  static const std::vector<std::string> names = {"lora", "qat", "prune"};
  return names;
}

std::vector<std::string> stage_hook_names(const json& stage, const std::string& origin, const std::string& path) {
  const json hooks = stage.value("hooks", json::array());
  const std::string expected = fmt::format("must be a list of hook names ({}), got ", fmt::join(known_hooks(), ", "));
  if (!hooks.is_array()) config_error(origin, path + ".hooks", expected + hooks.dump());
  std::vector<std::string> out;
  for (size_t i = 0; i < hooks.size(); ++i) {
    const auto& h = hooks[i];
    if (!h.is_string() || std::find(known_hooks().begin(), known_hooks().end(), h.get<std::string>()) == known_hooks().end()) {
      const auto best = h.is_string() ? closest_name(h.get<std::string>(), known_hooks()) : "";
      config_error(origin, fmt::format("{}.hooks[{}]", path, i),
           fmt::format("is {}; {}a stage hook is one of: {} (configured by the top-level key of that name)", h.dump(),
                       best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(known_hooks(), ", ")));
    }
    if (std::find(out.begin(), out.end(), h.get<std::string>()) != out.end()) {
      config_error(origin, fmt::format("{}.hooks[{}]", path, i), fmt::format("repeats {}", h.dump()));
    }
    out.push_back(h.get<std::string>());
  }
  return out;
}

const nlohmann::json& stage_defaults() {
  static const json d = {{"name", ""},   {"epochs", 1},        {"steps", 0},      {"lr", 1e-3},
                         {"loss_lr", -1.0}, {"trainable", json::array()}, {"eval_every", 0}, {"losses", json::array()},
                         {"hooks", json::array()}, {"param_groups", json::array()}, {"ema", true}, {"qat", json::object()},
                         {"prune", json::object()}, {"weighting", json::object({{"policy", "fixed"}})}};
  return d;
}

namespace {

// One stage object at `path` ("stages[2]"), validated: its spec (without hooks or weighting policy, which need
// the student), its hook names and its weighting.
StageConfig stage_from_json(const json& s, const std::string& origin, const std::string& path) {
  std::vector<std::string> keys;
  for (const auto& [k, _] : stage_defaults().items()) keys.push_back(k);
  if (!s.is_object()) config_error(origin, path, fmt::format("must be an object with keys {}, got {}", fmt::join(keys, ", "), s.dump()));
  for (const auto& [k, v] : s.items()) {
    if (!stage_defaults().contains(k)) {
      const auto best = closest_name(k, keys);
      config_error(origin, path + "." + k,
           fmt::format("is not a stage key; {}allowed: {}", best.empty() ? "" : "did you mean '" + best + "'? ",
                       fmt::join(keys, ", ")));
    }
  }
  // Bounded above too, so that steps = epochs x steps per epoch cannot overflow into a short plan.
  auto get_int = [&](const char* key) {
    const Range r = *key_range(std::string("stages[].") + key);
    const auto lo = static_cast<int64_t>(r.lo), hi = static_cast<int64_t>(r.hi);
    const json v = s.value(key, stage_defaults()[key]);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)) ||
        v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
      config_error(origin, path + "." + key, fmt::format("must be an integer in [{}, {}], got {}", lo, hi, v.dump()));
    }
    return v.get<int64_t>();
  };
  auto get_lr = [&](const char* key, bool allow_default) {
    const json v = s.value(key, stage_defaults()[key]);
    const Range r = *key_range(std::string("stages[].") + key);
    if (!v.is_number() || !(r.contains(v.get<double>()) || (allow_default && v.get<double>() == -1))) {
      config_error(origin, path + "." + key,
           fmt::format("must be a number in {}{}, got {}", r.to_string(), allow_default ? " (or -1: same as lr)" : "", v.dump()));
    }
    return v.get<double>();
  };
  StageConfig stage;
  StageSpec& spec = stage.spec;
  const json name = s.value("name", json(""));
  if (!name.is_string() || name.get<std::string>().empty()) {
    config_error(origin, path + ".name", fmt::format("must be a non-empty string, got {}", name.dump()));
  }
  spec.name(name.get<std::string>());
  spec.epochs(get_int("epochs")).steps(get_int("steps")).eval_every(get_int("eval_every"));
  if (spec.epochs() == 0 && spec.steps() == 0) config_error(origin, path, "needs epochs >= 1 or steps >= 1");
  spec.lr(get_lr("lr", false)).loss_lr(get_lr("loss_lr", true));
  const json trainable = s.value("trainable", json::array());
  if (!trainable.is_array() || !std::all_of(trainable.begin(), trainable.end(), [](const json& x) { return x.is_string(); })) {
    config_error(origin, path + ".trainable",
         fmt::format("must be a list of regexes over parameter names (empty: all), got {}", trainable.dump()));
  }
  spec.trainable(trainable.get<std::vector<std::string>>());
  spec.param_groups(param_groups_from_json(s.value("param_groups", json::array()), origin, path + ".param_groups"));
  const json ema = s.value("ema", json(true));
  if (!ema.is_boolean()) config_error(origin, path + ".ema", fmt::format("must be true or false, got {}", ema.dump()));
  spec.ema(ema.get<bool>());
  stage.hooks = stage_hook_names(s, origin, path);  // made by the caller: hooks need the student
  const auto& hooks = stage.hooks;
  if (s.contains("qat")) {  // this stage's QAT settings (kd::qat::StageOptions)
    qat_stage_options_from_json(s["qat"], origin, path + ".qat");
    if (std::find(hooks.begin(), hooks.end(), "qat") == hooks.end()) {
      config_error(origin, path + ".qat", "sets QAT options but the stage does not list \"qat\" in its \"hooks\"; add it there");
    }
  }
  if (s.contains("prune")) {  // this stage's sparsity schedule
    prune_stage_from_json(s["prune"], origin, path + ".prune");
    if (std::find(hooks.begin(), hooks.end(), "prune") == hooks.end()) {
      config_error(origin, path + ".prune", "sets a pruning schedule but the stage does not list \"prune\" in its \"hooks\"; add it there");
    }
  }
  const json losses = s.value("losses", json::array());
  if (!losses.is_array() || losses.empty()) {
    config_error(origin, path + ".losses",
         fmt::format("must be a non-empty list of loss terms like {{\"type\": \"temperature_kl\", \"weight\": 0.8}}, "
                     "got {}", losses.dump()));
  }
  std::vector<LossSpec> terms;
  for (size_t k = 0; k < losses.size(); ++k) {
    const std::string lpath = fmt::format("{}.losses[{}]", path, k);
    terms.push_back(loss_from_json(losses[k], origin, lpath));
    try {  // the registry knows each loss's keys and values
      LossRegistry::global().create(terms.back());
    } catch (const Error& e) {
      throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}': {}", origin, lpath, e.message()));
    }
  }
  stage.weighting = stage_weighting(s, terms, origin, path);  // made by the caller: min_norm needs the student
  spec.losses(std::move(terms));
  return stage;
}

}  // namespace

std::vector<StageConfig> stage_configs_from_json(const json& stages, const std::string& origin) {
  // Checking a stage builds its losses, and their projections draw initial weights: the random stream the run
  // seeded must be where it was afterwards, so that `kd-train teacher` and distill's own teacher start alike.
  const GeneratorsKept kept;
  if (!stages.is_array() || stages.empty()) {
    config_error(origin, "stages", fmt::format("must be a non-empty array of stage objects, got {}", stages.dump()));
  }
  std::vector<StageConfig> out;
  for (size_t i = 0; i < stages.size(); ++i) {
    out.push_back(stage_from_json(stages[i], origin, fmt::format("stages[{}]", i)));
  }
  try {  // what spans stages and terms: duplicate term names
    std::vector<StageSpec> specs;
    for (const auto& s : out) specs.push_back(s.spec);
    build_stages(specs);
  } catch (const Error& e) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: {}", origin, e.message()));
  }
  return out;
}

std::vector<StageSpec> stages_from_json(const json& stages, const std::string& origin) {
  std::vector<StageSpec> specs;
  for (const auto& s : stage_configs_from_json(stages, origin)) specs.push_back(s.spec);
  return specs;
}

json stages_to_json(const std::vector<StageSpec>& stages) {
  json out = json::array();
  for (const auto& s : stages) {
    json losses = json::array();
    for (const auto& l : s.losses()) losses.push_back(loss_to_json(l));
    json hooks = json::array();
    for (const auto& h : s.hooks()) hooks.push_back(h->name());
    out.push_back({{"name", s.name()},
                   {"epochs", s.epochs()},
                   {"steps", s.steps()},
                   {"lr", s.lr()},
                   {"loss_lr", s.loss_lr()},
                   {"trainable", s.trainable()},
                   {"eval_every", s.eval_every()},
                   {"losses", losses},
                   {"hooks", hooks},
                   {"param_groups", param_groups_to_json(s.param_groups())},
                   {"ema", s.ema()}});
  }
  return out;
}

}  // namespace kd::app
