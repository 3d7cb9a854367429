#include "run_config.h"

#include <fmt/format.h>
#include <zlib.h>

#include "kd/core/device.h"
#include "kd/core/error.h"
#include "config.h"
#include "custom_task.h"
#include "hook_config.h"
#include "stage_config.h"
#include "task.h"

namespace kd::models {

// A config's "attention" by its name (kAttentionKindNames), for ModelConfig's reader below.
void from_json(const nlohmann::json& j, AttentionKind& kind) {
  kind = kAttentionKindNames.at(j.get<std::string>(), "student.attention");
}
void to_json(nlohmann::json& j, AttentionKind kind) { j = kAttentionKindNames.name(kind); }

}  // namespace kd::models

namespace kd::app {

// The sections whose keys are the fields' names: each key a task lacks keeps the struct's default.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DataConfig, root, limit, eval_limit, validation_size, max_len, context,
                                                split_seed, student_labels, train, validation, test, num_classes,
                                                validation_fraction)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ModelConfig, model, torchscript, width1, width2, hidden, layers, d_model,
                                                heads, ffn, vocab, dropout, attention, dynamic_depth, depth_thresholds,
                                                depth_layers)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(EvaluationConfig, fgsm_epsilon, ece_bins, best_metric)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(GenerateConfig, prompt, tokens, temperature, top_k, seed)

namespace {

using json = nlohmann::json;

std::string crc_hex(const std::string& text) {
  return fmt::format("{:08x}", crc32(0L, reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size())));
}

TeacherConfig teacher_config(const json& t) {
  TeacherConfig c;
  c.shape = t.get<ModelConfig>();
  c.epochs = t.value("epochs", c.epochs);
  c.steps = t.value("steps", c.steps);
  c.path = t.value("path", c.path);
  c.self_distillation = t.value("self_distillation", c.self_distillation);
  const json& cache = t["cache"];
  c.cache.enabled = cache["enabled"];
  c.cache.top_k = cache["top_k"];
  c.cache.dtype = parse_dtype(cache["dtype"].get<std::string>());
  c.cache.path = cache["path"];
  // The defaults are empty lists, so the validator has no element type to check these against.
  const json& files = t["ensemble"];
  for (size_t i = 0; i < files.size(); ++i) {
    if (!files[i].is_string() || files[i].get<std::string>().empty()) {
      config_error("config", fmt::format("teacher.ensemble[{}]", i),
                   fmt::format("must be a teacher file name, got {}", files[i].dump()));
    }
    c.ensemble.push_back(files[i]);
  }
  for (const auto& w : t["ensemble_weights"]) {
    if (!w.is_number() || w.get<double>() < 0) {
      config_error("config", "teacher.ensemble_weights",
                   fmt::format("must hold numbers >= 0, got {}", t["ensemble_weights"].dump()));
    }
    c.ensemble_weights.push_back(w.get<double>());
  }
  c.ensemble_temperature = t["ensemble_temperature"];
  return c;
}

TrainConfig train_config(const json& t, const Task& task) {
  TrainConfig c;
  c.device = t["device"];
  c.threads = t["threads"];
  c.batch_size = t["batch_size"];
  c.log_every = t["log_every"];
  c.checkpoint_every = t["checkpoint_every"];
  c.seed = t["seed"];
  c.lr = t["lr"];
  c.weight_decay = t["weight_decay"];
  c.precision = kPrecisionNames.at(t["precision"].get<std::string>(), "train.precision");
  c.tensorboard = t.value("tensorboard", "");
  c.trainer.optimizer(kOptimizerKindNames.at(t["optimizer"].get<std::string>(), "train.optimizer"))
      .momentum(t["momentum"])
      .nesterov(t["nesterov"])
      .accumulation(t["accumulation"])
      .clip_norm(t["clip_norm"])
      .warmup_steps(t["warmup_steps"])
      .min_lr_factor(t["min_lr_factor"])
      .ema_decay(t["ema_decay"])
      .eval_on_ema(t["eval_on_ema"])
      .keep_last(t["keep_last"])
      .hard_example_mix(t["hard_example_mix"])
      .hardness(kHardnessNames.at(t["hardness"].get<std::string>(), "train.hardness"))
      .nonfinite(kNonFinitePolicyNames.at(t["nonfinite"].get<std::string>(), "train.nonfinite"))
      .lr_backoff(t["lr_backoff"])
      .max_consecutive_nonfinite(t["max_consecutive_nonfinite"]);
  c.trainer.augmentation(task.augmentation(t["augment"], t["mix_alpha"], t["mix_probability"]));
  auto adversarial =
      AdversarialOptions().epsilon(t["adversarial_epsilon"]).ratio(t["adversarial_ratio"]).pad_token(task.pad_token());
  if (const auto range = task.input_range()) adversarial.input_min(range->first).input_max(range->second);
  c.trainer.adversarial(adversarial);
  return c;
}

std::vector<StageConfig> stage_configs(const json& stages) {
  auto out = stage_configs_from_json(stages, "config");
  for (size_t i = 0; i < out.size(); ++i) out[i].fingerprint = crc_hex(stages[i].dump());
  return out;
}

}  // namespace

std::string config_fingerprint(json config) {
  config.erase("out");
  config.erase("evaluation");  // what is measured after training, not how it trains
  for (const char* k : {"threads", "device", "log_every", "checkpoint_every", "keep_last", "tensorboard"}) {
    if (config.contains("train")) config["train"].erase(k);
  }
  return crc_hex(config.dump());
}

std::vector<StageSpec> RunConfig::specs() const {
  std::vector<StageSpec> specs;
  for (const auto& s : stages) specs.push_back(s.spec);
  return specs;
}

bool RunConfig::uses_hook(const std::string& hook) const {
  for (const auto& s : stages) {
    if (std::find(s.hooks.begin(), s.hooks.end(), hook) != s.hooks.end()) return true;
  }
  return false;
}

RunConfig parse_run_config(const json& resolved) {
  RunConfig c;
  c.document = resolved;
  c.task = &task_of(resolved);
  c.out = resolved["out"];
  c.data = resolved["data"].get<DataConfig>();
  c.teacher = teacher_config(resolved["teacher"]);
  c.student = resolved["student"].get<ModelConfig>();
  c.stages = stage_configs(resolved["stages"]);
  if (resolved.contains("evaluation")) c.evaluation = resolved["evaluation"].get<EvaluationConfig>();
  if (resolved.contains("generate")) c.generate = resolved["generate"].get<GenerateConfig>();
  const json& stages = resolved["stages"];
  c.hooks.lora = lora_options_from_json(resolved["lora"], "config");
  c.hooks.lora_hook = lora_hook_options_from_json(resolved["lora"]);
  c.hooks.qat = qat_options_from_json(resolved["qat"], "config");
  c.hooks.qat_hook = qat_hook_options_from_json(resolved["qat"], stages);
  c.hooks.prune = prune_options_from_json(resolved["prune"], "config");
  c.hooks.prune_hook = prune_hook_options_from_json(resolved["prune"], stages);
  c.train = train_config(resolved["train"], *c.task);
  return c;
}

}  // namespace kd::app
