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
#include "kd/models/linear_attention.h"
#include "kd/prune/pruning.h"
#include "kd/quant/fake_quantize.h"
#include "config_keys.h"
#include "custom_task.h"
#include "stage_config.h"
#include "task.h"

namespace kd::app {
namespace {

using json = nlohmann::json;


// The other tasks whose schema has the key at dotted `path` (for "set task to use it" hints).
std::vector<std::string> tasks_with_key(const std::string& path, const std::string& except) {
  std::vector<std::string> found;
  for (const auto& t : task_names()) {
    if (t == except) continue;
    const json* node = &task_defaults(t);
    bool ok = true;
    for (size_t start = 0, dot; ok && start <= path.size(); start = dot + 1) {
      dot = path.find('.', start);
      if (dot == std::string::npos) dot = path.size();
      const std::string key = path.substr(start, dot - start);
      ok = node->is_object() && node->contains(key);
      if (ok) node = &(*node)[key];
    }
    if (ok) found.push_back(t);
  }
  return found;
}

// "an integer", "a string": json_type_name with its article, for messages.
std::string type_name(const json& v) {
  const std::string t = json_type_name(v);
  if (t == "null") return t;
  return (t == "integer" || t == "object" || t == "array" ? "an " : "a ") + t;
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

// `choices`: config_choices(task), built once per validated layer.
void check(const json& schema, const json& value, const std::string& path, const std::string& origin,
           const std::string& task, const std::map<std::string, std::vector<std::string>>& choices) {
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
      std::string hint =
          best.empty() ? "" : fmt::format("did you mean '{}'? ", path.empty() ? best : path + "." + best);
      // A key of another task (student.layers in a fashion_mnist config): say which, and how to switch.
      if (const auto others = tasks_with_key(here, task); !others.empty()) {
        // "spam", "spam and byte_lm", "spam, byte_lm and custom"
        std::string list = others.back();
        if (others.size() > 1) {
          list = fmt::format("{} and {}", fmt::join(others.begin(), others.end() - 1, ", "), others.back());
        }
        hint = fmt::format("'{}' is a key of task {} (this config's task is \"{}\"; set \"task\": \"{}\" to use it); ",
                           here, list, task, others.front());
      }
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
      check(s, v, here, origin, task, choices);
      continue;
    }
    if (!same_type(s, v)) {
      throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' must be {} (like {}), got {} ({})", origin, here,
                                                      type_name(s), s.dump(), type_name(v), v.dump()));
    }
    if (s.is_array() && !s.empty()) {  // a list of numbers (or strings) like its default
      for (size_t i = 0; i < v.size(); ++i) {
        if (!same_type(s.front(), v[i])) {
          throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}[{}]' must be {} (like {}), got {} ({})", origin, here,
                                                          i, type_name(s.front()), s.dump(), type_name(v[i]), v[i].dump()));
        }
      }
    }
    if (auto it = choices.find(here); it != choices.end()) {
      const auto& allowed = it->second;
      if (std::find(allowed.begin(), allowed.end(), v.get<std::string>()) == allowed.end()) {
        throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' = {} is not allowed; use one of: {}", origin, here,
                                                        v.dump(), fmt::join(allowed, ", ")));
      }
    }
    if (const auto r = key_range(here); r && !r->contains(v.get<double>())) {
      throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' = {} is out of range; allowed {}", origin, here,
                                                      v.dump(), r->to_string()));
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
      // Up to 9 digits: a longer index is out of range of any list a config holds (and of stoull).
      const bool numeric = key.find_first_not_of("0123456789") == std::string::npos && key.size() <= 9;
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

json shared_config_defaults() {
  return {
      // cache.enabled: the teacher runs once over the training set; its logits (all, or the top_k) and the
      // hidden states / attention maps the stages' losses name are read from OUT/teacher.cache afterwards.
      // cache.path: a cache built earlier to read ("" = OUT/teacher.cache, rebuilt when stale); a given one
      // must match this teacher, data and options.
      {"teacher",
       {{"cache", {{"enabled", false}, {"top_k", 0}, {"dtype", "float16"}, {"path", ""}}},
        // ensemble: more teacher files (this task's teacher.pt states; TorchScript files for "custom") distilled
        // together with the teacher above as one (kd::MultiTeacher): their soft targets mixed with ensemble_weights
        // (empty = equal) at ensemble_temperature (0 = the T of the first temperature_kl, dkd or teacher_mixture_kl
        // term); teacher_mixture_kl learns the weights from the labels instead.
        {"ensemble", json::array()},
        {"ensemble_weights", json::array()},
        {"ensemble_temperature", 0.0}}},
      // After training, beside the test scores: the expected calibration error over ece_bins bins (classifiers).
      // best_metric: the validation score that picks OUT/student.best.pt ("" = the task's headline: accuracy, or
      // bits per byte for language models).
      {"evaluation", {{"ece_bins", 15}, {"best_metric", ""}}},
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
      // Used by stages that list "prune" (see kd::prune::Options, kd::prune::HookOptions): magnitude pruning of
      // single weights ("unstructured"), output channels ("channel") or attention heads ("head"), sparsity from
      // start to end over each such stage (cubic; a stage's own "prune": {"start", "end"} overrides it).
      {"prune",
       {{"granularity", "unstructured"},
        {"targets", json::array()},
        {"exclude", json::array()},
        {"start", 0.0},
        {"end", 0.5},
        {"update_every", 10}}},
      {"train",
       {{"batch_size", 128},
        {"lr", 1e-3},  // the teacher's (each stage has its own "lr")
        {"weight_decay", 1e-2},
        {"seed", 0},
        {"threads", 0},
        {"device", "cpu"},
        {"log_every", 100},
        // TensorBoard scalars: "" = OUT/tensorboard, "none" = not written, else that folder (student/, teacher/).
        {"tensorboard", ""},
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
        // augment: "shift_flip" (images), "cutmix" (images) or "token_mix" (spam): mixing ones make soft
        // targets in the proportion each example contributes, λ ~ Beta(mix_alpha, mix_alpha), a batch mixed with
        // probability mix_probability; all refuse the teacher cache (the inputs change every epoch).
        {"augment", "none"},
        {"mix_alpha", 1.0},
        {"mix_probability", 1.0},
        // adversarial_epsilon > 0: adversarial_ratio of every batch is replaced by examples made against the
        // student (images: FGSM with step epsilon; token ids: HotFlip of that share of each sequence's tokens).
        {"adversarial_epsilon", 0.0},
        {"adversarial_ratio", 0.5},
        // NaN/Inf loss or gradient: "skip" the update, "lower_lr" (skip and x lr_backoff), "rollback" to the
        // newest checkpoint (and x lr_backoff), or "stop"; max_consecutive_nonfinite in a row always stop.
        {"nonfinite", "skip"},
        {"lr_backoff", 0.5},
        {"max_consecutive_nonfinite", 5}}},
  };
}

namespace {

void validate_for(const json& config, const std::string& task, const std::string& origin) {
  if (!config.is_object()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the configuration must be a JSON object, got {}", origin,
                                                    type_name(config)));
  }
  check(task_defaults(task), config, "", origin, task, config_choices(task));
}

json parse_layer(const std::string& text, const std::string& origin) {
  json layer;
  try {
    layer = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond a double
    throw Error(ErrorCategory::kConfig, fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  if (!layer.is_object()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the configuration must be a JSON object, got {}", origin,
                                                    type_name(layer)));
  }
  return layer;
}

}  // namespace

std::string json_type_name(const json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  if (v.is_object()) return "object";
  return "null";
}

std::map<std::string, std::vector<std::string>> config_choices(const std::string& task) {
  std::map<std::string, std::vector<std::string>> c = {
      {"task", task_names()},
      {"train.precision", kPrecisionNames.names()},
      {"teacher.cache.dtype", {"float32", "float16", "bfloat16"}},
      {"train.optimizer", kOptimizerKindNames.names()},
      {"train.hardness", kHardnessNames.names()},
      {"train.augment", {"none", "shift_flip", "cutmix", "token_mix"}},
      {"train.nonfinite", kNonFinitePolicyNames.names()},
      {"qat.weight_observer", qat::kObserverNames.names()},
      {"student.attention", models::kAttentionKindNames.names()},
      {"prune.granularity", prune::kGranularityNames.names()},
      {"qat.activation_observer", qat::kObserverNames.names()},
  };
  c["student.model"] = task_named(task).student_models();
  return c;
}

const nlohmann::json& task_defaults(const std::string& task) {
  static const std::map<std::string, json> by_task = [] {
    std::map<std::string, json> m;
    for (const auto& t : task_names()) m[t] = task_named(t).defaults();
    return m;
  }();
  const auto it = by_task.find(task);
  if (it == by_task.end()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("'task' = \"{}\" is not a task; use one of: {}", task, fmt::join(task_names(), ", ")));
  }
  return it->second;
}

const nlohmann::json& distill_defaults() { return task_defaults("fashion_mnist"); }

void config_error(const std::string& origin, const std::string& path, const std::string& problem) {
  throw Error(ErrorCategory::kConfig, fmt::format("{}: '{}' {}", origin, path, problem));
}

std::string task_named_in(const nlohmann::json& layer, const std::string& origin) {
  if (!layer.is_object() || !layer.contains("task")) return "";
  const json& t = layer["task"];
  const auto& names = task_names();
  if (!t.is_string() || std::find(names.begin(), names.end(), t.get<std::string>()) == names.end()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: 'task' = {} is not allowed; use one of: {}", origin, t.dump(),
                                                    fmt::join(names, ", ")));
  }
  return t.get<std::string>();
}

void validate_config(const nlohmann::json& config, const std::string& origin) {
  const std::string task = task_named_in(config, origin);
  validate_for(config, task.empty() ? "fashion_mnist" : task, origin);
}

nlohmann::json parse_config_text(const std::string& text, const std::string& origin) {
  json layer = parse_layer(text, origin);
  validate_config(layer, origin);
  return layer;
}

nlohmann::json resolve_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  // The task decides the defaults (and so the schema), so find it first: the last file naming one,
  // then any --set task=...
  std::vector<json> layers;
  std::string task = "fashion_mnist";
  for (const auto& file : files) {
    std::ifstream in(file);
    if (!in) {
      throw Error(ErrorCategory::kFile, fmt::format("config file '{}' cannot be opened; check the path", file));
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    layers.push_back(parse_layer(text, file));
    if (const auto t = task_named_in(layers.back(), file); !t.empty()) task = t;
  }
  std::vector<std::pair<std::string, json>> sets;  // (key path, value)
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("--set '{}': expected key.path=value, e.g. --set stages.2.epochs=3", o));
    }
    sets.emplace_back(o.substr(0, eq), parse_value(o.substr(eq + 1), "--set " + o));
    if (sets.back().first == "task") {
      task = task_named_in(json{{"task", sets.back().second}}, "--set " + o);
    }
  }
  json config = task_defaults(task);
  for (size_t i = 0; i < files.size(); ++i) {
    validate_for(layers[i], task, files[i]);
    config.merge_patch(layers[i]);
  }
  for (size_t i = 0; i < sets.size(); ++i) {
    const std::string origin = "--set " + overrides[i];
    config = with_override(config, sets[i].first, sets[i].second, origin);
    validate_for(config, task, origin);
  }
  config["task"] = task;
  // The custom task's metrics follow its data: the number of classes is read from the training targets once.
  if (task == "custom") config = with_custom_classes(config);
  return config;
}

}  // namespace kd::app
