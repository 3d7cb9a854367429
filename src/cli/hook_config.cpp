#include "hook_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"
#include "config.h"

namespace kd::app {

using json = nlohmann::json;

namespace {
std::vector<std::string> strings_at(const json& list, const std::string& origin, const std::string& path,
                                    const char* what) {
  std::vector<std::string> out;
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_string() || list[i].get<std::string>().empty()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("{}: '{}[{}]' must be {}, got {}", origin, path, i, what, list[i].dump()));
    }
    out.push_back(list[i].get<std::string>());
  }
  return out;
}
}  // namespace

lora::Options lora_options_from_json(const json& j, const std::string& origin) {
  const auto names = strings_at(j.at("targets"), origin, "lora.targets",
                                "a layer name (\"fc1\", a dotted suffix like \"attn.q_proj\", or \"re:<regex>\")");
  return lora::Options()
      .rank(j.at("rank").get<int64_t>())
      .alpha(j.at("alpha").get<double>())
      .rslora(j.at("rslora").get<bool>())
      .dropout(j.value("dropout", 0.0))
      .targets(names);
}

lora::HookOptions lora_hook_options_from_json(const json& j) {
  return lora::HookOptions().merge_at_end(j.at("merge_at_end").get<bool>());
}


qat::Options qat_options_from_json(const json& j, const std::string& origin) {
  return qat::Options()
      .bits(8)
      .per_channel(j.at("per_channel").get<bool>())
      .narrow_range(j.at("narrow_range").get<bool>())
      .weight_observer(qat::kObserverNames.at(j.at("weight_observer").get<std::string>(), "qat.weight_observer"))
      .activations(j.at("activations").get<bool>())
      .activation_observer(
          qat::kObserverNames.at(j.at("activation_observer").get<std::string>(), "qat.activation_observer"))
      .averaging_constant(j.at("averaging_constant").get<double>())
      .exclude(strings_at(j.at("exclude"), origin, "qat.exclude",
                          "a regex over layer names (e.g. \"^fc$\" keeps the classifier in float)"));
}

const std::vector<std::string>& qat_stage_keys() {
  static const std::vector<std::string> keys = {"fake_quant", "observers", "freeze_observers_at",
                                                "freeze_observers_at_step"};
  return keys;
}

qat::StageOptions qat_stage_options_from_json(const json& j, const std::string& origin, const std::string& path) {
  const auto fail = [&](const std::string& where, const std::string& problem) { config_error(origin, where, problem); };
  if (!j.is_object()) {
    fail(path, fmt::format("must be an object with keys {}, got {}", fmt::join(qat_stage_keys(), ", "), j.dump()));
  }
  qat::StageOptions o;
  for (const auto& [key, v] : j.items()) {
    const std::string here = path + "." + key;
    if (key == "fake_quant" || key == "observers") {
      if (!v.is_boolean()) fail(here, fmt::format("must be true or false, got {}", v.dump()));
      if (key == "fake_quant") o.fake_quant(v.get<bool>());
      else o.observers(v.get<bool>());
    } else if (key == "freeze_observers_at") {
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1) {
        fail(here, fmt::format("must be a fraction of the stage in [0, 1], got {}", v.dump()));
      }
      o.freeze_observers_at(v.get<double>());
    } else if (key == "freeze_observers_at_step") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) {
        fail(here, fmt::format("must be an optimizer step of the stage (an integer >= 0), got {}", v.dump()));
      }
      o.freeze_observers_at_step(v.get<int64_t>());
    } else {
      const auto best = closest_name(key, qat_stage_keys());
      fail(here, fmt::format("is not a key of a stage's QAT settings; {}allowed: {}",
                             best.empty() ? "" : "did you mean '" + best + "'? ", fmt::join(qat_stage_keys(), ", ")));
    }
  }
  return o;
}

prune::Options prune_options_from_json(const json& j, const std::string& origin) {
  const std::string g = j.at("granularity");
  const char* what = "a layer name (\"fc\", a dotted suffix like \"attn.q_proj\", or \"re:<regex>\")";
  return prune::Options()
      .granularity(prune::kGranularityNames.at(g, "prune.granularity"))
      .targets(strings_at(j.at("targets"), origin, "prune.targets", what))
      .exclude(strings_at(j.at("exclude"), origin, "prune.exclude", what));
}

prune::StageSparsity prune_stage_from_json(const json& j, const std::string& origin, const std::string& path,
                                           prune::StageSparsity defaults) {
  const auto fail = [&](const std::string& where, const std::string& problem) { config_error(origin, where, problem); };
  if (!j.is_object()) fail(path, fmt::format("must be an object with keys start, end, got {}", j.dump()));
  for (const auto& [key, v] : j.items()) {
    const std::string here = path + "." + key;
    if (key != "start" && key != "end") {
      const auto best = closest_name(key, {"start", "end"});
      fail(here, fmt::format("is not a key of a stage's pruning schedule; {}allowed: start, end",
                             best.empty() ? "" : "did you mean '" + best + "'? "));
    }
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() >= 1) {
      fail(here, fmt::format("must be a sparsity in [0, 1), got {}", v.dump()));
    }
    (key == "start" ? defaults.start : defaults.end) = v.get<double>();
  }
  return defaults;
}

prune::HookOptions prune_hook_options_from_json(const json& j, const json& stages) {
  const prune::StageSparsity schedule{j.at("start").get<double>(), j.at("end").get<double>()};
  prune::StageSchedules per_stage;
  for (size_t i = 0; stages.is_array() && i < stages.size(); ++i) {
    const auto& s = stages[i];
    if (!s.is_object() || !s.contains("prune")) continue;
    per_stage[s.value("name", std::string())] =
        prune_stage_from_json(s["prune"], "config", fmt::format("stages[{}].prune", i), schedule);
  }
  return prune::HookOptions().schedule(schedule).stages(per_stage).update_every(j.at("update_every").get<int64_t>());
}

qat::HookOptions qat_hook_options_from_json(const json& j, const json& stages) {
  auto options = qat::HookOptions().freeze_observers_at(j.at("freeze_observers_at").get<double>());
  for (size_t i = 0; stages.is_array() && i < stages.size(); ++i) {
    const auto& s = stages[i];
    if (!s.is_object() || !s.contains("qat")) continue;
    options.stage(s.value("name", std::string()),
                  qat_stage_options_from_json(s["qat"], "config", fmt::format("stages[{}].qat", i)));
  }
  return options;
}

}  // namespace kd::app
