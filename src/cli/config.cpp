#include "config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"
#include "kd/train/recipes.h"
#include "stage_config.h"

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
      {"teacher.cache.top_k", {0, 1e6}},
      {"train.batch_size", {1, 65536}},
      {"train.lr", {0, 10, true}},
      {"train.weight_decay", {0, 10}},
      {"train.threads", {0, 1024}},
      {"train.seed", {0, 9.007199254740992e15}},
      {"train.log_every", {0, 1e9}},
      {"train.checkpoint_every", {0, 1e9}},
      {"train.keep_last", {1, 1000}},
      {"train.momentum", {0, 1}},
      {"train.accumulation", {1, 65536}},
      {"train.clip_norm", {0, 1e6}},
      {"train.warmup_steps", {0, 1e9}},
      {"train.min_lr_factor", {0, 1}},
      {"train.ema_decay", {0, 0.999999999}},
      {"train.hard_example_mix", {0, 1}},
      {"train.lr_backoff", {0, 1, true}},
      {"train.max_consecutive_nonfinite", {1, 1e6}},
      {"student.width1", {1, 4096}},
      {"student.width2", {1, 4096}},
      {"student.hidden", {1, 65536}},
      {"lora.rank", {1, 4096}},
      {"lora.alpha", {0, 1e6, true}},
      {"lora.dropout", {0, 0.999}},
      {"qat.averaging_constant", {0, 1, true}},
      {"qat.freeze_observers_at", {0, 1}},
  };
  return r;
}

// String keys with a fixed set of values.
const std::map<std::string, std::vector<std::string>>& choices() {
  static const std::map<std::string, std::vector<std::string>> c = {
      {"train.precision", {"fp32", "bf16"}},
      {"teacher.cache.dtype", {"float32", "float16", "bfloat16"}},
      {"train.optimizer", {"adamw", "sgd"}},
      {"train.hardness", {"teacher_entropy", "disagreement"}},
      {"train.augment", {"none", "shift_flip"}},
      {"train.nonfinite", {"skip", "lower_lr", "rollback", "stop"}},
      {"student.model", {"depthwise_cnn", "cnn"}},
      {"qat.weight_observer", {"moving_average", "minmax"}},
      {"qat.activation_observer", {"moving_average", "minmax"}},
  };
  return c;
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

// A JSON number written with a fraction or exponent that is a whole number int64 can hold (2.0, 1e3).
// The range check comes first: converting a larger double to int64 is undefined (fuzz_config found
// -2.2e88 for an integer key).
bool integral_in_int64(double d) {
  constexpr double kTwoTo63 = 9223372036854775808.0;
  return std::isfinite(d) && d >= -kTwoTo63 && d < kTwoTo63 && d == std::trunc(d);
}

bool same_type(const json& schema, const json& v) {
  if (schema.is_number_integer() || schema.is_number_unsigned()) {
    return v.is_number_integer() || v.is_number_unsigned() || (v.is_number_float() && integral_in_int64(v.get<double>()));
  }
  if (schema.is_number_float()) return v.is_number();
  return std::string(schema.type_name()) == v.type_name();
}

void check(const json& schema, const json& value, const std::string& path, const std::string& origin) {
  for (const auto& [key, v] : value.items()) {
    const std::string here = path.empty() ? key : path + "." + key;
    if (here == "stages" && schema.contains(key)) {
      stages_from_json(v, origin);  // its own schema: stage keys and registered losses
      continue;
    }
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
    if (auto it = choices().find(here); it != choices().end()) {
      const auto& allowed = it->second;
      if (std::find(allowed.begin(), allowed.end(), v.get<std::string>()) == allowed.end()) {
        throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' = {} is not allowed; use one of: {}", origin, here,
                                                        v.dump(), fmt::join(allowed, ", ")));
      }
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

// `origin` names the --set for errors.
json parse_value(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::parse_error&) {
    return json(text);  // bare words are strings: --set train.device=cuda
  } catch (const json::exception& e) {  // e.g. out_of_range: a number beyond a double (1e999)
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the value is not usable: {}", origin, e.what()));
  }
}

// `config` with the value at "a.b.2.c" replaced; numeric parts index arrays
// (stages.2.epochs), other parts name object keys (created when absent, so the
// validator can name an unknown one with a suggestion).
json with_override(json config, const std::string& path, const json& value, const std::string& origin) {
  json* node = &config;
  std::string walked;
  for (size_t start = 0, dot; start <= path.size(); start = dot + 1) {
    dot = path.find('.', start);
    if (dot == std::string::npos) dot = path.size();
    const std::string key = path.substr(start, dot - start);
    if (key.empty()) throw Error(ErrorCategory::kConfig, fmt::format("{}: empty key in '{}'", origin, path));
    if (node->is_array()) {
      const bool numeric = key.find_first_not_of("0123456789") == std::string::npos;
      if (!numeric || std::stoull(key) >= node->size()) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("{}: '{}' is a list of {} entries; index it with 0..{} (e.g. {}.0), not '{}'", origin,
                                walked, node->size(), node->size() == 0 ? 0 : node->size() - 1, walked, key));
      }
      node = &(*node)[std::stoull(key)];
    } else {
      if (!node->is_object()) *node = json::object();
      node = &(*node)[key];
    }
    walked = walked.empty() ? key : walked + "." + key;
  }
  *node = value;
  return config;
}

}  // namespace

const nlohmann::json& distill_defaults() {
  static const json defaults = {
      {"out", "runs/default"},
      {"data",
       {{"root", "/usr/share/datasets/fashion-mnist"}, {"limit", 0}, {"validation_size", 5000}, {"split_seed", 0}}},
      // cache.enabled: the teacher runs once over the training set; its logits (all, or the top_k) and the
      // hidden states / attention maps the stages' losses name are read from OUT/teacher.cache afterwards.
      // path: a teacher state written by `kd-train teacher` to use instead of OUT/teacher.pt ("" = OUT's,
      // trained there when missing). cache.path: a cache built earlier to read ("" = OUT/teacher.cache, rebuilt
      // when stale); a given one must match this teacher, data and options.
      {"teacher",
       {{"epochs", 2},
        {"path", ""},
        {"cache", {{"enabled", false}, {"top_k", 0}, {"dtype", "float16"}, {"path", ""}}}}},
      // width1/width2 as in DepthwiseCnnStudentOptions; hidden is used by "cnn" (the teacher's architecture) only.
      {"student", {{"model", "depthwise_cnn"}, {"width1", 16}, {"width2", 32}, {"hidden", 256}}},
      {"stages", stages_to_json(progressive3())},
      // Used by stages that list "lora" in their "hooks" (see kd::lora::Options, kd::lora::HookOptions).
      {"lora", {{"rank", 8}, {"alpha", 16.0}, {"rslora", false}, {"dropout", 0.0}, {"targets", json::array()},
                {"merge_at_end", true}}},
      // Used by stages that list "qat" (see kd::qat::Options, kd::qat::HookOptions); int8 only.
      {"qat",
       {{"per_channel", true},
        {"narrow_range", true},
        {"weight_observer", "moving_average"},
        {"activations", true},
        {"activation_observer", "moving_average"},
        {"averaging_constant", 0.01},
        {"exclude", json::array()},
        {"freeze_observers_at", 0.5}}},
      {"train",
       {{"batch_size", 128},
        {"lr", 1e-3},
        {"weight_decay", 1e-2},
        {"seed", 0},
        {"threads", 0},
        {"device", "cpu"},
        {"log_every", 100},
        {"checkpoint_every", 500},
        {"keep_last", 3},
        {"precision", "fp32"},
        {"optimizer", "adamw"},
        {"momentum", 0.9},
        {"nesterov", false},
        {"accumulation", 1},
        {"clip_norm", 1.0},
        {"warmup_steps", 0},
        {"min_lr_factor", 0.0},
        {"ema_decay", 0.0},
        {"eval_on_ema", false},
        {"hard_example_mix", 0.0},
        {"hardness", "teacher_entropy"},
        {"augment", "none"},
        // NaN/Inf loss or gradient: "skip" the update, "lower_lr" (skip and x lr_backoff), "rollback" to the
        // newest checkpoint (and x lr_backoff), or "stop"; max_consecutive_nonfinite in a row always stop.
        {"nonfinite", "skip"},
        {"lr_backoff", 0.5},
        {"max_consecutive_nonfinite", 5}}},
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

nlohmann::json parse_config_text(const std::string& text, const std::string& origin) {
  json layer;
  try {
    layer = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond a double
    throw Error(ErrorCategory::kConfig, fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  validate_config(layer, origin);
  return layer;
}

nlohmann::json resolve_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  json config = distill_defaults();
  for (const auto& file : files) {
    std::ifstream in(file);
    if (!in) {
      throw Error(ErrorCategory::kFile, fmt::format("config file '{}' cannot be opened; check the path", file));
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    config.merge_patch(parse_config_text(text, file));
  }
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("--set '{}': expected key.path=value, e.g. --set stages.2.epochs=3", o));
    }
    config = with_override(config, o.substr(0, eq), parse_value(o.substr(eq + 1), "--set " + o), "--set " + o);
    validate_config(config, "--set " + o);
  }
  return config;
}

}  // namespace kd::app
