#pragma once
// kd-train's tasks: what a config's "task" names. A task composes library parts for the app:
// the data set and its splits (kd::data), the teacher's and the student's architectures
// (kd::models) from the config's "teacher" / "student" sections, and how a model is scored
// (kd::evaluate_classifier or kd::evaluate_language_model).
//
//   fashion_mnist  Fashion-MNIST images, CnnTeacher -> DepthwiseCnnStudent (or a plain CNN)
//   spam           SpamAssassin mails as padded bytes, spam/ham: TransformerEncoder 6 -> 2 layers
//   byte_lm        SpamAssassin mails as byte windows, next-byte prediction: CausalLM -> smaller CausalLM
//   custom         the user's TorchScript teacher and student, safetensors data (custom_task.h)
//
// Each task's default config (Task::defaults, read through config.h's task_defaults) is also its schema.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "kd/core/model.h"
#include "kd/data/augmentation.h"
#include "kd/data/tensor_dataset.h"
#include "kd/train/staged_trainer.h"
#include "run_config.h"

namespace kd::app {

struct Splits {
  data::TensorDataset train, validation, test;
};

/// A model's scores on one split, in the order kd-train prints them; the first is the headline
/// ("accuracy" for classifiers, "bits_per_byte" for language models).
struct Scores {
  std::vector<std::pair<std::string, double>> values;
  /// Classifiers scored with calibration bins: the expected calibration error (not a column of the tables).
  std::optional<double> ece;
  /// The value named `name`; kd::Error (kValue) naming the ones there are when it is missing.
  double at(const std::string& name) const;
  const std::string& headline() const { return values.front().first; }
  /// {"accuracy": 0.91, "macro_f1": 0.91}
  nlohmann::json to_json() const;
  /// "accuracy 91.83%, macro-F1 0.9183" / "bits/byte 2.1340, perplexity 4.3900, token accuracy 45.21%"
  std::string to_string() const;
};

class Task {
 public:
  virtual ~Task() = default;
  /// The config's "task" value.
  virtual std::string name() const = 0;
  /// What it is, for logs: "Fashion-MNIST", "SpamAssassin spam/ham", "SpamAssassin byte LM".
  virtual std::string title() const = 0;
  /// The task's default config: config.h's shared_config_defaults() with the task's own data, teacher, student
  /// and stages. It doubles as the task's schema (every allowed key, with the type its value must have);
  /// read it through task_defaults(name), which builds it once.
  virtual nlohmann::json defaults() const = 0;
  /// The values "student.model" takes for this task (its student architectures).
  virtual std::vector<std::string> student_models() const = 0;
  /// Train / validation / test splits as the config's "data" section says; logs their sizes.
  /// kd::Error (kFile) naming the data folder and the install command when the data are missing.
  virtual Splits load_splits(const RunConfig& config, const torch::Device& device) const = 0;
  /// The teacher's architecture (untrained) from config.teacher; `name` receives its display name.
  virtual std::shared_ptr<Model> make_teacher(const RunConfig& config, std::string* name = nullptr) const = 0;
  /// The student's architecture (untrained) from config.student; with `activation_quant` its activation
  /// quantization points (models that have them). `name` receives its display name.
  virtual std::shared_ptr<Model> make_student(const RunConfig& config, bool activation_quant,
                                              std::string* name = nullptr) const = 0;
  /// Whether kd-train trains the teacher (into OUT/teacher.pt) when it has none; false when the task's
  /// teacher is a file the user brings, used as it is.
  virtual bool trains_teacher() const { return true; }
  /// Classes of a classification task; 0 for language modelling.
  virtual int64_t num_classes() const = 0;
  EvalTask eval_task() const { return num_classes() > 0 ? EvalTask::kClassification : EvalTask::kLanguageModel; }
  /// Whether a larger headline score is better (accuracy) or a smaller one (bits per byte).
  bool higher_is_better() const { return num_classes() > 0; }
  /// Scores of `model` on `split` (eval mode, no grad; the model's training flag is restored); for
  /// classifiers with `ece_bins` > 0 also the expected calibration error, from the same pass.
  Scores evaluate(Model& model, const data::TensorDataset& split, int64_t ece_bins = 0) const;
  /// One example input of the shape the task's models take, for tracing (kd-train export).
  virtual torch::Tensor example_input(const RunConfig& config) const = 0;
  /// The token id of padding (never written by adversarial token flips), or −1 for inputs without.
  virtual int64_t pad_token() const { return 0; }
  /// The valid range of an input value as the task encodes it (images: the normalised black and
  /// white), which FGSM examples are clamped to; unset for token ids.
  virtual std::optional<std::pair<double, double>> input_range() const { return std::nullopt; }
  /// The training-batch augmentation train.augment names (`name`; mixing ones draw λ ~ Beta(mix_alpha,
  /// mix_alpha) and mix a batch with probability mix_probability), or null for "none"; kd::Error (kConfig)
  /// naming the ones that fit this task's inputs when it names another.
  std::shared_ptr<data::Augmentation> augmentation(const std::string& name, double mix_alpha,
                                                   double mix_probability) const;

 protected:
  /// The augmentations that fit this task's inputs (besides "none").
  virtual std::vector<std::string> augmentations() const = 0;
  /// An empty pixel as this task's inputs encode it, for shift_flip to fill uncovered pixels with
  /// (image tasks whose inputs are normalised override it).
  virtual double blank_pixel() const { return 0.0; }
};

/// `s` capped as a config's "data" section says, on `device`: data.limit caps every split, data.eval_limit
/// (when > 0) the validation and test splits instead (0 = no cap).
Splits capped(Splits s, const DataConfig& data, const torch::Device& device);

/// The task a resolved config tree names (its "task" key; the custom task with its data.num_classes).
const Task& task_of(const nlohmann::json& config);
/// The task called `name` as a config layer sees it before any data are read (the custom task with its
/// classes unknown: use task_of for a resolved config). kd::Error (kConfig) naming the tasks for another name.
const Task& task_named(const std::string& name);
/// Every task's name, for messages and `kd-train list`.
const std::vector<std::string>& task_names();

}  // namespace kd::app
