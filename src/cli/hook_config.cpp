#include "hook_config.h"

#include <fmt/format.h>

#include "kd/core/error.h"

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

qat::Observer observer(const json& name) {
  return name == "minmax" ? qat::Observer::kMinMax : qat::Observer::kMovingAverage;
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
      .weight_observer(observer(j.at("weight_observer")))
      .activations(j.at("activations").get<bool>())
      .activation_observer(observer(j.at("activation_observer")))
      .averaging_constant(j.at("averaging_constant").get<double>())
      .exclude(strings_at(j.at("exclude"), origin, "qat.exclude",
                          "a regex over layer names (e.g. \"^fc$\" keeps the classifier in float)"));
}

qat::HookOptions qat_hook_options_from_json(const json& j) {
  return qat::HookOptions().freeze_observers_at(j.at("freeze_observers_at").get<double>());
}

}  // namespace kd::app
