#pragma once
// kd-train's resolved configuration parsed once into types: what the subcommands, the tasks and the run set-up
// read. config.h resolves and validates the JSON tree (defaults < --config files < --set); parse_run_config turns
// it into these structs, and nothing after that reads a value out of JSON. The tree itself stays beside them
// (RunConfig::document) to be written out (OUT/config.json) and fingerprinted for the checkpoints.
//
//   const auto config = kd::app::parse_run_config(kd::app::resolve_config({"my.json"}, {"train.seed=1"}));
//   config.task->load_splits(config, torch::kCPU);  // config.data, config.student, ... are plain values

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "kd/adapters/lora.h"
#include "kd/adapters/lora_hook.h"
#include "kd/models/linear_attention.h"
#include "kd/prune/pruning.h"
#include "kd/prune/pruning_hook.h"
#include "kd/quant/qat.h"
#include "kd/quant/qat_hook.h"
#include "kd/train/autocast.h"
#include "kd/train/staged_trainer.h"
#include "kd/train/stage_spec.h"
#include "weighting_config.h"

namespace kd::app {

class Task;

/// The "data" section. Each task reads its own keys; the others keep these defaults.
struct DataConfig {
  std::string root;                     ///< fashion_mnist, spam, byte_lm: the data folder ("" = the installed corpus)
  int64_t limit = 0;                    ///< caps every split (0 = all)
  int64_t eval_limit = 0;               ///< caps validation and test instead, when > 0 (spam, byte_lm)
  int64_t validation_size = 0;          ///< fashion_mnist: training images held out for validation
  int64_t max_len = 0;                  ///< spam: bytes per mail
  int64_t context = 0;                  ///< byte_lm: bytes per window
  uint64_t split_seed = 0;              ///< draws the held-out splits and data.student_labels
  double student_labels = 1.0;          ///< share of training labels the student's hard-label terms see
  std::string train, validation, test;  ///< custom: safetensors files ("" validation / test: held out / = validation)
  int64_t num_classes = 0;              ///< custom: given or read from data.train's targets (0 = a language model)
  double validation_fraction = 0.1;     ///< custom: share of data.train held out when data.validation is ""
};

/// A "teacher" or "student" section's architecture keys; each task reads those of its models.
struct ModelConfig {
  std::string model;        ///< student.model: the architecture by name ("" for a custom TorchScript student)
  std::string torchscript;  ///< custom: the model's TorchScript file
  int64_t width1 = 16, width2 = 32, hidden = 256;                   ///< CNNs
  int64_t layers = 0, d_model = 0, heads = 0, ffn = 0, vocab = 256;  ///< transformers (ffn 0 = 4·d_model)
  double dropout = 0.1;
  models::AttentionKind attention = models::AttentionKind::kSoftmax;  ///< spam's student
  bool dynamic_depth = false;                                          ///< spam's student
  std::vector<int64_t> depth_thresholds, depth_layers;
};

/// teacher.cache: the teacher's outputs over the training set, computed once.
struct TeacherCacheConfig {
  bool enabled = false;
  int64_t top_k = 0;                   ///< 0 = every logit
  torch::Dtype dtype = torch::kHalf;   ///< stored precision
  std::string path;                    ///< "" = OUT/teacher.cache
};

/// The "teacher" section.
struct TeacherConfig {
  ModelConfig shape;        ///< its architecture (spam, byte_lm) or TorchScript file (custom)
  int64_t epochs = 0, steps = 0;
  std::string path;         ///< a teacher.pt to use instead of OUT's ("" = OUT/teacher.pt)
  bool self_distillation = false;
  TeacherCacheConfig cache;
  std::vector<std::string> ensemble;  ///< more teacher files, mixed with the first
  std::vector<double> ensemble_weights;
  double ensemble_temperature = 0;    ///< 0 = the T of the stages' first soft-target term
};

/// The "evaluation" section: what is measured after training.
struct EvaluationConfig {
  double fgsm_epsilon = 0;  ///< accuracy under FGSM with this step (image tasks; 0 = not measured)
  int64_t ece_bins = 0;     ///< calibration bins (classifiers; 0 = not measured)
  std::string best_metric;  ///< picks OUT/student.best.pt ("" = the task's headline)
};

/// The "generate" section (byte_lm): samples printed before and after training.
struct GenerateConfig {
  std::string prompt;
  int64_t tokens = 0;
  double temperature = 1;
  int64_t top_k = 0;
  uint64_t seed = 0;
};

/// One entry of "stages": the stage itself, its hooks by name (made once the student exists) and its weighting.
struct StageConfig {
  StageSpec spec;                  ///< without hooks or weighting policy (build_student adds them)
  std::vector<std::string> hooks;  ///< "lora", "qat", "prune"
  WeightingConfig weighting;
  std::string fingerprint;         ///< of the stage's JSON: a resume may change stages not yet begun
};

/// The "train" section: the trainer's settings, and how kd-train runs it.
struct TrainConfig {
  std::string device;
  int threads = 0;  ///< 0 = every core, shared out among the local ranks
  int64_t batch_size = 0, log_every = 0, checkpoint_every = 0;
  uint64_t seed = 0;
  double lr = 0, weight_decay = 0;  ///< lr: the teacher's (each stage has its own)
  Precision precision = Precision::kFloat32;
  std::string tensorboard;  ///< "" = OUT/tensorboard, "none" = not written
  /// The optimizer, schedule, EMA, mining, augmentation, adversarial and fault settings (the rest of the
  /// section); the run-specific ones (checkpoints, fingerprints, process group) are set by the command.
  StagedTrainerOptions trainer;
};

/// The hook sections, for the stages that list the hook.
struct HookConfigs {
  lora::Options lora;
  lora::HookOptions lora_hook;
  qat::Options qat;
  qat::HookOptions qat_hook;
  prune::Options prune;
  prune::HookOptions prune_hook;
};

/// A resolved kd-train configuration, typed.
struct RunConfig {
  const Task* task = nullptr;  ///< what "task" names (data, architectures, scores)
  std::string out;
  DataConfig data;
  TeacherConfig teacher;
  ModelConfig student;
  std::vector<StageConfig> stages;
  EvaluationConfig evaluation;
  std::optional<GenerateConfig> generate;
  HookConfigs hooks;
  TrainConfig train;
  /// The resolved tree these were parsed from: written to OUT/config.json and fingerprinted, never read for values.
  nlohmann::json document;

  /// The stages' specs, in order.
  std::vector<StageSpec> specs() const;
  /// Whether any stage lists `hook` ("lora", "qat", "prune").
  bool uses_hook(const std::string& hook) const;
};

/// Parses a resolved config (config.h: resolve_config) into a RunConfig. The tree is valid, so what remains
/// to refuse is what the validator cannot see by itself: a train.augment that does not fit the task, a
/// teacher.ensemble entry that is not a file name, a negative ensemble weight — kd::Error (kConfig) naming the
/// JSON path and the fix.
RunConfig parse_run_config(const nlohmann::json& resolved);

/// A config tree's fingerprint (CRC-32, hex) over what decides the training result: everything but where it goes
/// (out) and how it is measured, shown or scheduled (evaluation; train.threads, device, log_every,
/// checkpoint_every, keep_last, tensorboard).
std::string config_fingerprint(nlohmann::json config);

/// `config` with the JSON tree changed by `edit` and parsed again (derived runs: the baseline, feature widths).
template <typename Edit>
RunConfig reparsed(const RunConfig& config, Edit edit) {
  nlohmann::json document = config.document;
  edit(document);
  return parse_run_config(document);
}

}  // namespace kd::app
