#include "config.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd::app {
namespace {

using json = nlohmann::json;

struct Range {
  double lo, hi;
  bool lo_open = false;
};

// Numeric keys with limits; a key not listed only has to have the right type.
const std::map<std::string, Range>& ranges() {
  static const std::map<std::string, Range> r = {
      {"data.limit", {0, 1e9}},
      {"data.validation_size", {0, 59999}},
      {"teacher.epochs", {0, 1000}},
      {"student.epochs", {1, 1000}},
      {"loss.temperature", {0, 100, /*lo_open=*/true}},
      {"loss.kl_weight", {0, 1}},
      {"train.batch_size", {1, 65536}},
      {"train.lr", {0, 10, true}},
      {"train.weight_decay", {0, 10}},
      {"train.threads", {0, 1024}},
      {"train.seed", {0, 9.007199254740992e15}},
      {"train.log_every", {0, 1e9}},
  };
  return r;
}

std::string type_name(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  return "null";
}

bool same_type(const json& schema, const json& v) {
  if (schema.is_number_integer() || schema.is_number_unsigned()) {
    return v.is_number_integer() || v.is_number_unsigned() ||
           (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>())));
  }
  if (schema.is_number_float()) return v.is_number();
  return std::string(schema.type_name()) == v.type_name();
}

void check(const json& schema, const json& value, const std::string& path, const std::string& origin) {
  for (const auto& [key, v] : value.items()) {
    const std::string here = path.empty() ? key : path + "." + key;
    if (!schema.contains(key)) {
      std::vector<std::string> allowed;
      for (const auto& [k, _] : schema.items()) allowed.push_back(k);
      const std::string best = closest_name(key, allowed);
      const std::string hint =
          best.empty() ? "" : fmt::format("did you mean '{}'? ", path.empty() ? best : path + "." + best);
      throw Error(ErrorCategory::kConfig,
                  fmt::format("{}: unknown key '{}'; {}allowed keys{}: {}", origin, here, hint,
                              path.empty() ? "" : " under '" + path + "'", fmt::join(allowed, ", ")));
    }
    const json& s = schema.at(key);
    if (s.is_object()) {
      if (!v.is_object()) {
        std::vector<std::string> keys;
        for (const auto& [k, _] : s.items()) keys.push_back(k);
        throw Error(ErrorCategory::kConfig,
                    fmt::format("{}: '{}' must be an object with keys {}, got {} ({})", origin, here,
                                fmt::join(keys, ", "), type_name(v), v.dump()));
      }
      check(s, v, here, origin);
      continue;
    }
    if (!same_type(s, v)) {
      throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' must be {} (like {}), got {} ({})", origin, here,
                                                      type_name(s), s.dump(), type_name(v), v.dump()));
    }
    if (auto it = ranges().find(here); it != ranges().end()) {
      const double x = v.get<double>();
      const Range& r = it->second;
      if (x > r.hi || x < r.lo || (r.lo_open && x == r.lo)) {
        throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' = {} is out of range; allowed {}{}, {}]", origin,
                                                        here, v.dump(), r.lo_open ? "(" : "[", r.lo, r.hi));
      }
    }
  }
}

json parse_value(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::parse_error&) {
    return json(text);  // bare words are strings: --set train.device=cuda
  }
}

}  // namespace

const nlohmann::json& distill_defaults() {
  static const json defaults = {
      {"out", "runs/default"},
      {"data",
       {{"root", "/usr/share/datasets/fashion-mnist"}, {"limit", 0}, {"validation_size", 5000}, {"split_seed", 0}}},
      {"teacher", {{"epochs", 2}}},
      {"student", {{"epochs", 3}}},
      {"loss", {{"temperature", 4.0}, {"kl_weight", 0.9}}},
      {"train",
       {{"batch_size", 128},
        {"lr", 1e-3},
        {"weight_decay", 1e-2},
        {"seed", 0},
        {"threads", 0},
        {"device", "cpu"},
        {"log_every", 100}}},
  };
  return defaults;
}

void validate_config(const nlohmann::json& config, const std::string& origin) {
  if (!config.is_object()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the configuration must be a JSON object, got {}", origin,
                                                    type_name(config)));
  }
  check(distill_defaults(), config, "", origin);
}

nlohmann::json resolve_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  json config = distill_defaults();
  for (const auto& file : files) {
    std::ifstream in(file);
    if (!in) {
      throw Error(ErrorCategory::kFile, fmt::format("config file '{}' cannot be opened; check the path", file));
    }
    json layer;
    try {
      layer = json::parse(in);
    } catch (const json::parse_error& e) {
      throw Error(ErrorCategory::kConfig, fmt::format("{}: not valid JSON: {}", file, e.what()));
    }
    validate_config(layer, file);
    config.merge_patch(layer);
  }
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("--set '{}': expected key.path=value, e.g. --set student.epochs=5", o));
    }
    const std::string path = o.substr(0, eq);
    std::vector<std::string> keys;
    for (size_t start = 0, dot; start <= path.size(); start = dot + 1) {
      dot = path.find('.', start);
      if (dot == std::string::npos) dot = path.size();
      keys.push_back(path.substr(start, dot - start));
    }
    json patch = parse_value(o.substr(eq + 1));
    for (auto it = keys.rbegin(); it != keys.rend(); ++it) patch = json{{*it, patch}};
    validate_config(patch, "--set " + o);
    config.merge_patch(patch);
  }
  return config;
}

}  // namespace kd::app
