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
#include "kd/train/recipes.h"
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

void check(const json& schema, const json& value, const std::string& path, const std::string& origin,
           const std::string& task) {
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
      check(s, v, here, origin, task);
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
    const auto allowed_values = config_choices(task);
    if (auto it = allowed_values.find(here); it != allowed_values.end()) {
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

namespace {

// The Fashion-MNIST recipe: also every section the other tasks share (lora, qat, train).
json fashion_mnist_defaults() {
  return {
      {"task", "fashion_mnist"},
      {"out", "runs/default"},
      {"data",
       {{"root", "/usr/share/datasets/fashion-mnist"},
        {"limit", 0},
        {"validation_size", 5000},
        {"split_seed", 0},
        // student_labels: the fraction of training examples whose labels the student's hard-label terms
        // see (drawn with split_seed; the others are -100); the teacher always trains on every label.
        {"student_labels", 1.0}}},
      // steps > 0 trains the teacher for that many optimizer steps instead of `epochs`.
      // cache.enabled: the teacher runs once over the training set; its logits (all, or the top_k) and the
      // hidden states / attention maps the stages' losses name are read from OUT/teacher.cache afterwards.
      // path: a teacher state written by `kd-train teacher` to use instead of OUT/teacher.pt ("" = OUT's,
      // trained there when missing). cache.path: a cache built earlier to read ("" = OUT/teacher.cache, rebuilt
      // when stale); a given one must match this teacher, data and options.
      {"teacher",
       {{"epochs", 2},
        {"steps", 0},
        {"path", ""},
        {"cache", {{"enabled", false}, {"top_k", 0}, {"dtype", "float16"}, {"path", ""}}},
        // ensemble: more teacher files (this task's teacher.pt states; TorchScript files for "custom") distilled
        // together with the teacher above as one (kd::MultiTeacher): their soft targets mixed with ensemble_weights
        // (empty = equal) at ensemble_temperature (0 = the T of the first temperature_kl, dkd or teacher_mixture_kl
        // term); teacher_mixture_kl learns the weights from the labels instead.
        {"ensemble", json::array()},
        {"ensemble_weights", json::array()},
        {"ensemble_temperature", 0.0},
        // self_distillation: no teacher model at all; the stages' teacher is the student's own moving average
        // (train.ema_decay > 0), run on each batch with the averaged weights (kd::StagedTrainerOptions).
        {"self_distillation", false}}},
      // width1/width2 as in DepthwiseCnnStudentOptions; hidden is used by "cnn" (the teacher's architecture) only.
      {"student", {{"model", "depthwise_cnn"}, {"width1", 16}, {"width2", 32}, {"hidden", 256}}},
      {"stages", stages_to_json(progressive3())},
      // After training, beside the test scores: accuracy under an FGSM attack of this L∞ step made against each
      // model itself (0 = not measured; image tasks), and the expected calibration error over ece_bins bins.
      // best_metric: the validation score that picks OUT/student.best.pt ("" = the task's headline: accuracy, or
      // bits per byte for language models).
      {"evaluation", {{"fgsm_epsilon", 0.0}, {"ece_bins", 15}, {"best_metric", ""}}},
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

// A transformer's shape in a "teacher" / "student" section (ffn 0 = 4·d_model).
json transformer_section(int64_t layers, int64_t d_model, int64_t heads) {
  return {{"layers", layers}, {"d_model", d_model}, {"heads", heads}, {"ffn", 0}, {"dropout", 0.1}};
}

json teacher_section(int64_t epochs, int64_t steps, json shape) {
  shape["epochs"] = epochs;
  shape["steps"] = steps;
  shape["path"] = "";
  shape["cache"] = {{"enabled", false}, {"top_k", 0}, {"dtype", "float16"}, {"path", ""}};
  for (const char* k : {"ensemble", "ensemble_weights", "ensemble_temperature", "self_distillation"}) {
    shape[k] = fashion_mnist_defaults()["teacher"][k];
  }
  return shape;
}

// spam: a 6-layer byte encoder distilled into 2 layers with the three phases: hidden states of teacher
// layers 3 and 6 -> student layers 1 and 2 (projected 64 -> 128), attention maps of the same layers
// (4 teacher heads averaged in pairs onto 2), then soft targets and hard labels.
json spam_defaults() {
  json d = fashion_mnist_defaults();
  d["task"] = "spam";
  d["out"] = "runs/spam";
  // root "" = where scripts/setup installs the corpus ($KD_DATA_DIR or ~/.cache/kdistill/spam-assassin).
  // limit caps every split, eval_limit (when > 0) the validation and test splits; max_len: bytes per mail.
  d["data"] = {{"root", ""}, {"limit", 0}, {"eval_limit", 0}, {"max_len", 128}, {"split_seed", 0}, {"student_labels", 1.0}};
  d["evaluation"].erase("fgsm_epsilon");  // FGSM needs images; token ids have no L∞ step
  d["teacher"] = teacher_section(4, 0, transformer_section(6, 128, 4));
  // dynamic_depth: a batch whose longest real length is <= depth_thresholds[i] bytes runs depth_layers[i] layers.
  d["student"] = transformer_section(2, 64, 2);
  d["student"]["model"] = "transformer";
  d["student"]["dynamic_depth"] = false;
  // attention: "softmax", or "linear" (kernel feature map, O(L); attention terms then see its surrogate).
  d["student"]["attention"] = "softmax";
  d["student"]["depth_thresholds"] = {64};
  d["student"]["depth_layers"] = {1};
  d["stages"] = json::parse(R"([
    {"name": "features", "epochs": 1,
     "losses": [{"type": "feature_l2", "name": "feat", "weight": 1.0, "teacher_layers": [2, 5], "student_layers": [0, 1],
                 "teacher_dims": [128, 128], "student_dims": [64, 64]}]},
    {"name": "attention", "epochs": 1,
     "losses": [{"type": "feature_l2", "name": "feat", "weight": 1.0, "teacher_layers": [2, 5], "student_layers": [0, 1],
                 "teacher_dims": [128, 128], "student_dims": [64, 64]},
                {"type": "attention_mse", "name": "attn", "weight": 0.5, "teacher_layers": [2, 5], "student_layers": [0, 1]}]},
    {"name": "logits", "epochs": 3,
     "losses": [{"type": "feature_l2", "name": "feat", "weight": 1.0, "teacher_layers": [2, 5], "student_layers": [0, 1],
                 "teacher_dims": [128, 128], "student_dims": [64, 64]},
                {"type": "attention_mse", "name": "attn", "weight": 0.5, "teacher_layers": [2, 5], "student_layers": [0, 1]},
                {"type": "temperature_kl", "name": "kl", "weight": 0.8, "temperature": 3.0},
                {"type": "hard_label_ce", "name": "ce", "weight": 0.2}]}
  ])");
  d["lora"]["targets"] = {"q_proj", "v_proj"};
  d["qat"]["activations"] = false;  // the encoder has no activation quantization points: weights only
  d["train"]["batch_size"] = 32;
  d["train"]["lr"] = 5e-4;
  d["train"]["warmup_steps"] = 50;
  d["train"]["log_every"] = 50;
  return d;
}

// byte_lm: a 4-layer byte LM (d 192) distilled into 2 layers of half the width by per-token KL at T = 1
// plus the next-byte cross-entropy; "generate" prints samples of both models before and after.
json byte_lm_defaults() {
  json d = fashion_mnist_defaults();
  d["task"] = "byte_lm";
  d["out"] = "runs/byte_lm";
  // context: bytes per training window; eval_limit: validation / test windows scored (0 = all).
  d["data"] = {{"root", ""}, {"limit", 0}, {"eval_limit", 512}, {"context", 128}, {"split_seed", 0}};
  d["evaluation"] = {{"best_metric", ""}};  // bits per byte, perplexity and token accuracy only
  d["teacher"] = teacher_section(1, 1000, transformer_section(4, 192, 3));
  d["student"] = transformer_section(2, 96, 2);
  d["student"]["model"] = "causal_lm";
  d["stages"] = json::parse(R"([
    {"name": "distill", "steps": 1000,
     "losses": [{"type": "temperature_kl", "name": "kl", "weight": 0.5, "temperature": 1.0},
                {"type": "hard_label_ce", "name": "ce", "weight": 0.5}]}
  ])");
  // Samples printed before and after training: `tokens` bytes after `prompt`, temperature + top-k.
  d["generate"] = {{"prompt", "Subject: "}, {"tokens", 160}, {"temperature", 0.8}, {"top_k", 20}, {"seed", 0}};
  d["lora"]["targets"] = {"q_proj", "v_proj"};
  d["qat"]["activations"] = false;
  d["train"]["batch_size"] = 16;
  d["train"]["warmup_steps"] = 100;
  d["train"]["log_every"] = 100;
  return d;
}

// custom: the user's TorchScript teacher and student and safetensors data (custom_task.h); one stage of soft
// targets (KL at T = 3) and hard labels, which fits any classifier or language model.
json custom_defaults() {
  json d = fashion_mnist_defaults();
  d["task"] = "custom";
  d["out"] = "runs/custom";
  // validation / test "" = held out of train (validation_fraction, drawn with split_seed) / the validation split.
  // num_classes 0 = max(train targets) + 1 for [N] class ids; [N, L] token targets are a language model.
  d["data"] = {{"train", ""}, {"validation", ""}, {"test", ""}, {"num_classes", 0}, {"validation_fraction", 0.1},
               {"split_seed", 0}, {"limit", 0}, {"student_labels", 1.0}};
  d["teacher"] = {{"torchscript", ""},
                  {"cache", d["teacher"]["cache"]},
                  {"ensemble", d["teacher"]["ensemble"]},
                  {"ensemble_weights", d["teacher"]["ensemble_weights"]},
                  {"ensemble_temperature", d["teacher"]["ensemble_temperature"]}};
  // torchscript: the student's file; or model: a library architecture sized from the data ("depthwise_cnn" /
  // "cnn" for images: width1, width2, hidden; "transformer" / "causal_lm" for token ids: layers, d_model, heads,
  // ffn, dropout, vocab).
  d["student"] = {{"torchscript", ""}, {"model", ""},   {"width1", 16},  {"width2", 32},    {"hidden", 256}, {"layers", 2},
                  {"d_model", 64},     {"heads", 2},    {"ffn", 0},      {"dropout", 0.1},  {"vocab", 256}};
  d["evaluation"].erase("fgsm_epsilon");  // the input range of the user's data is unknown
  d["stages"] = json::parse(R"([
    {"name": "distill", "epochs": 3,
     "losses": [{"type": "temperature_kl", "name": "kl", "weight": 0.8, "temperature": 3.0},
                {"type": "hard_label_ce", "name": "ce", "weight": 0.2}]}
  ])");
  d["train"]["batch_size"] = 64;
  d["train"]["log_every"] = 50;
  return d;
}

void validate_for(const json& config, const std::string& task, const std::string& origin) {
  if (!config.is_object()) {
    throw Error(ErrorCategory::kConfig, fmt::format("{}: the configuration must be a JSON object, got {}", origin,
                                                    type_name(config)));
  }
  check(task_defaults(task), config, "", origin, task);
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
  c["student.model"] = task == "spam"      ? std::vector<std::string>{"transformer"}
                       : task == "byte_lm" ? std::vector<std::string>{"causal_lm"}
                       : task == "custom"  ? std::vector<std::string>{"", "depthwise_cnn", "cnn", "transformer", "causal_lm"}
                                           : std::vector<std::string>{"depthwise_cnn", "cnn"};
  return c;
}

const nlohmann::json& task_defaults(const std::string& task) {
  static const json fashion_mnist = fashion_mnist_defaults(), spam = spam_defaults(), byte_lm = byte_lm_defaults(),
                    custom = custom_defaults();
  if (task == "fashion_mnist") return fashion_mnist;
  if (task == "custom") return custom;
  if (task == "spam") return spam;
  if (task == "byte_lm") return byte_lm;
  throw Error(ErrorCategory::kConfig,
              fmt::format("'task' = \"{}\" is not a task; use one of: {}", task, fmt::join(task_names(), ", ")));
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
