#include "task.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/fashion_mnist.h"
#include "kd/data/mixing.h"
#include "kd/data/spam_assassin.h"
#include "kd/models/causal_lm.h"
#include "kd/models/cnn.h"
#include "kd/models/transformer_encoder.h"
#include "kd/train/calibration.h"
#include "kd/train/metric_names.h"
#include "kd/train/metrics.h"
#include "kd/train/recipes.h"
#include "config.h"
#include "custom_task.h"
#include "stage_config.h"

namespace kd::app {
namespace {

using json = nlohmann::json;

// The first `n` examples of `d` (all when n is 0 or at least its size).
data::TensorDataset first(const data::TensorDataset& d, int64_t n) {
  if (n <= 0 || n >= d.size()) return d;
  return d.select(torch::arange(n, torch::kLong));
}

data::TensorDataset to_device(data::TensorDataset d, const torch::Device& device) {
  d.inputs = d.inputs.to(device);
  d.targets = d.targets.to(device);
  if (d.mask.defined()) d.mask = d.mask.to(device);
  return d;
}

// A transformer's width and depth from a "teacher" / "student" section.
template <typename Options>
Options transformer_shape(Options o, const ModelConfig& s) {
  return o.layers(s.layers).d_model(s.d_model).heads(s.heads).ffn(s.ffn).dropout(s.dropout);
}

std::string transformer_name(const char* kind, const ModelConfig& s) {
  return fmt::format("{}({}x{}, {} heads)", kind, s.layers, s.d_model, s.heads);
}

// A model whose options the constructor rejects: name the config section that set them.
template <typename Fn>
std::shared_ptr<Model> build(const char* section, Fn fn) {
  try {
    return fn();
  } catch (const Error& e) {
    throw Error(ErrorCategory::kConfig, fmt::format("config: '{}': {}", section, e.message()));
  }
}

// A transformer's shape in a "teacher" / "student" section (ffn 0 = 4·d_model).
json transformer_section(int64_t layers, int64_t d_model, int64_t heads) {
  return {{"layers", layers}, {"d_model", d_model}, {"heads", heads}, {"ffn", 0}, {"dropout", 0.1}};
}

// The "teacher" section of a task whose teacher kd-train trains: the shared keys (cache, ensemble), the
// architecture `shape`, and how it is trained. steps > 0 trains the teacher for that many optimizer steps
// instead of `epochs`. path: a teacher state written by `kd-train teacher` to use instead of OUT/teacher.pt
// ("" = OUT's, trained there when missing). self_distillation: no teacher model at all; the stages' teacher is
// the student's own moving average (train.ema_decay > 0), run on each batch with the averaged weights
// (kd::StagedTrainerOptions).
json trained_teacher(int64_t epochs, int64_t steps, const json& shape) {
  json t = shared_config_defaults()["teacher"];
  for (const auto& [k, v] : shape.items()) t[k] = v;
  t["epochs"] = epochs;
  t["steps"] = steps;
  t["path"] = "";
  t["self_distillation"] = false;
  return t;
}

class FashionMnistTask : public Task {
 public:
  std::string name() const override { return "fashion_mnist"; }
  std::string title() const override { return "Fashion-MNIST"; }
  int64_t num_classes() const override { return 10; }

  // The Fashion-MNIST recipe: the depthwise-separable student learns the CNN teacher in three phases.
  json defaults() const override {
    json d = shared_config_defaults();
    d["task"] = name();
    d["out"] = "runs/default";
    // student_labels: the fraction of training examples whose labels the student's hard-label terms
    // see (drawn with split_seed; the others are -100); the teacher always trains on every label.
    d["data"] = {{"root", "/usr/share/datasets/fashion-mnist"},
                 {"limit", 0},
                 {"validation_size", 5000},
                 {"split_seed", 0},
                 {"student_labels", 1.0}};
    d["teacher"] = trained_teacher(2, 0, json::object());
    // width1/width2 as in DepthwiseCnnStudentOptions; hidden is used by "cnn" (the teacher's architecture) only.
    d["student"] = {{"model", "depthwise_cnn"}, {"width1", 16}, {"width2", 32}, {"hidden", 256}};
    d["stages"] = stages_to_json(progressive3());
    // Accuracy under an FGSM attack of this L∞ step made against each model itself (0 = not measured).
    d["evaluation"]["fgsm_epsilon"] = 0.0;
    return d;
  }
  std::vector<std::string> student_models() const override { return {"depthwise_cnn", "cnn"}; }

  Splits load_splits(const RunConfig& config, const torch::Device& device) const override {
    const DataConfig& d = config.data;
    auto opts = data::FashionMnistOptions()
                    .root(d.root)
                    .limit(d.limit)
                    .validation_size(d.validation_size)
                    .split_seed(d.split_seed);
    Splits s{data::load_fashion_mnist(data::Split::kTrain, opts), data::load_fashion_mnist(data::Split::kValidation, opts),
             data::load_fashion_mnist(data::Split::kTest, opts)};
    spdlog::info("Fashion-MNIST: {} train, {} validation, {} test images; device {}; {} threads", s.train.size(),
                 s.validation.size(), s.test.size(), device.str(), torch::get_num_threads());
    return {to_device(s.train, device), to_device(s.validation, device), to_device(s.test, device)};
  }

  std::shared_ptr<Model> make_teacher(const RunConfig&, std::string* name) const override {
    if (name) *name = "CnnTeacher";
    return models::CnnTeacher(models::CnnTeacherOptions()).ptr();
  }

  std::shared_ptr<Model> make_student(const RunConfig& config, bool activation_quant, std::string* name) const override {
    const ModelConfig& sc = config.student;
    if (sc.model == "cnn") {
      if (name) *name = fmt::format("Cnn({}/{}/{})", sc.width1, sc.width2, sc.hidden);
      return models::CnnTeacher(models::CnnTeacherOptions()
                                    .width1(sc.width1)
                                    .width2(sc.width2)
                                    .hidden(sc.hidden)
                                    .activation_quant(activation_quant))
          .ptr();
    }
    if (name) {
      *name = sc.width1 == 16 && sc.width2 == 32 ? "DepthwiseCnnStudent"
                                                 : fmt::format("DepthwiseCnnStudent({}/{})", sc.width1, sc.width2);
    }
    return models::DepthwiseCnnStudent(models::DepthwiseCnnStudentOptions()
                                           .width1(sc.width1)
                                           .width2(sc.width2)
                                           .activation_quant(activation_quant))
        .ptr();
  }

  torch::Tensor example_input(const RunConfig&) const override { return torch::zeros({1, 1, 28, 28}); }
  int64_t pad_token() const override { return -1; }
  std::optional<std::pair<double, double>> input_range() const override {
    return std::make_pair(data::kFashionMnistBlank, (1.0 - data::kFashionMnistMean) / data::kFashionMnistStd);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {"shift_flip", "cutmix"}; }
  double blank_pixel() const override { return data::kFashionMnistBlank; }
};

// Both text tasks read the same corpus; "data" holds where it is and how it is split.
data::SpamAssassinOptions corpus_options(const DataConfig& d) {
  auto o = data::SpamAssassinOptions().root(d.root).split_seed(d.split_seed);
  if (d.max_len > 0) o.max_len(d.max_len);
  if (d.context > 0) o.context(d.context);
  return o;
}

// One task's three splits of the corpus (`make`: classification or language_model), capped as "data" says.
Splits corpus_splits(const DataConfig& d, const torch::Device& device,
                     data::TensorDataset (data::SpamAssassin::*make)(data::Split) const, std::string& data_dir) {
  data::SpamAssassin corpus(corpus_options(d));
  data_dir = corpus.data_dir();
  return capped({(corpus.*make)(data::Split::kTrain), (corpus.*make)(data::Split::kValidation),
                 (corpus.*make)(data::Split::kTest)},
                d, device);
}

class SpamTask : public Task {
 public:
  std::string name() const override { return "spam"; }
  std::string title() const override { return "SpamAssassin spam/ham"; }
  int64_t num_classes() const override { return 2; }

  // spam: a 6-layer byte encoder distilled into 2 layers with the three phases: hidden states of teacher
  // layers 3 and 6 -> student layers 1 and 2 (projected 64 -> 128), attention maps of the same layers
  // (4 teacher heads averaged in pairs onto 2), then soft targets and hard labels.
  json defaults() const override {
    json d = shared_config_defaults();
    d["task"] = name();
    d["out"] = "runs/spam";
    // root "" = where scripts/setup installs the corpus ($KD_DATA_DIR or ~/.cache/kdistill/spam-assassin).
    // limit caps every split, eval_limit (when > 0) the validation and test splits; max_len: bytes per mail.
    d["data"] = {{"root", ""}, {"limit", 0}, {"eval_limit", 0}, {"max_len", 128}, {"split_seed", 0}, {"student_labels", 1.0}};
    d["teacher"] = trained_teacher(4, 0, transformer_section(6, 128, 4));
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
  std::vector<std::string> student_models() const override { return {"transformer"}; }

  Splits load_splits(const RunConfig& config, const torch::Device& device) const override {
    const DataConfig& d = config.data;
    std::string dir;
    const Splits s = corpus_splits(d, device, &data::SpamAssassin::classification, dir);
    auto spam = [](const data::TensorDataset& x) { return x.targets.sum().item<int64_t>(); };
    spdlog::info("SpamAssassin spam/ham ({}): {} train ({} spam), {} validation ({} spam), {} test ({} spam) mails, "
                 "first {} bytes of each; device {}; {} threads",
                 dir, s.train.size(), spam(s.train), s.validation.size(), spam(s.validation),
                 s.test.size(), spam(s.test), d.max_len, device.str(), torch::get_num_threads());
    return s;
  }

  std::shared_ptr<Model> make_teacher(const RunConfig& config, std::string* name) const override {
    return encoder(config.teacher.shape, config, false, "teacher", name);
  }
  std::shared_ptr<Model> make_student(const RunConfig& config, bool, std::string* name) const override {
    return encoder(config.student, config, true, "student", name);
  }

  torch::Tensor example_input(const RunConfig& config) const override {
    return torch::ones({1, config.data.max_len}, torch::kLong);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {"token_mix"}; }

 private:
  static std::shared_ptr<Model> encoder(const ModelConfig& s, const RunConfig& config, bool student,
                                        const char* section, std::string* name) {
    if (name) {
      *name = transformer_name("TransformerEncoder", s);
      if (student && s.attention == models::AttentionKind::kLinear) name->insert(name->size() - 1, ", linear attention");
    }
    return build(section, [&]() -> std::shared_ptr<Model> {
      auto o = transformer_shape(models::TransformerEncoderOptions(), s)
                   .pad_token(0)
                   .num_classes(2)
                   .max_len(config.data.max_len);
      if (student) {
        o.attention(s.attention)
            .dynamic_depth(s.dynamic_depth)
            .depth_thresholds(s.depth_thresholds)
            .depth_layers(s.depth_layers);
      }
      return models::TransformerEncoder(o).ptr();
    });
  }
};

class ByteLmTask : public Task {
 public:
  std::string name() const override { return "byte_lm"; }
  std::string title() const override { return "SpamAssassin byte LM"; }
  int64_t num_classes() const override { return 0; }

  // byte_lm: a 4-layer byte LM (d 192) distilled into 2 layers of half the width by per-token KL at T = 1
  // plus the next-byte cross-entropy; "generate" prints samples of both models before and after.
  json defaults() const override {
    json d = shared_config_defaults();
    d["task"] = name();
    d["out"] = "runs/byte_lm";
    // context: bytes per training window; eval_limit: validation / test windows scored (0 = all).
    d["data"] = {{"root", ""}, {"limit", 0}, {"eval_limit", 512}, {"context", 128}, {"split_seed", 0}};
    d["evaluation"].erase("ece_bins");  // bits per byte, perplexity and token accuracy: no calibration
    d["teacher"] = trained_teacher(1, 1000, transformer_section(4, 192, 3));
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
  std::vector<std::string> student_models() const override { return {"causal_lm"}; }

  Splits load_splits(const RunConfig& config, const torch::Device& device) const override {
    const DataConfig& d = config.data;
    std::string dir;
    const Splits s = corpus_splits(d, device, &data::SpamAssassin::language_model, dir);
    const int64_t context = d.context;
    spdlog::info("SpamAssassin byte LM ({}): windows of {} bytes: {} train, {} validation, {} test ({} / {} / {} "
                 "predicted bytes); device {}; {} threads",
                 dir, context, s.train.size(), s.validation.size(), s.test.size(),
                 s.train.size() * context, s.validation.size() * context, s.test.size() * context, device.str(),
                 torch::get_num_threads());
    return s;
  }

  std::shared_ptr<Model> make_teacher(const RunConfig& config, std::string* name) const override {
    return lm(config.teacher.shape, config, "teacher", name);
  }
  std::shared_ptr<Model> make_student(const RunConfig& config, bool, std::string* name) const override {
    return lm(config.student, config, "student", name);
  }

  torch::Tensor example_input(const RunConfig& config) const override {
    return torch::zeros({1, config.data.context}, torch::kLong);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {}; }  // windows of a stream: nothing to mix

 private:
  static std::shared_ptr<Model> lm(const ModelConfig& s, const RunConfig& config, const char* section,
                                   std::string* name) {
    if (name) *name = transformer_name("CausalLM", s);
    return build(section, [&]() -> std::shared_ptr<Model> {
      return models::CausalLM(transformer_shape(models::CausalLMOptions(), s).max_len(config.data.context)).ptr();
    });
  }
};

}  // namespace

Splits capped(Splits s, const DataConfig& d, const torch::Device& device) {
  const int64_t eval_cap = d.eval_limit > 0 ? d.eval_limit : d.limit;
  const int64_t limit = d.limit;
  return {to_device(first(s.train, limit), device), to_device(first(s.validation, eval_cap), device),
          to_device(first(s.test, eval_cap), device)};
}

double Scores::at(const std::string& name) const {
  for (const auto& [k, v] : values) {
    if (k == name) return v;
  }
  std::vector<std::string> names;
  for (const auto& kv : values) names.push_back(kv.first);
  throw Error(ErrorCategory::kValue, fmt::format("no score '{}'; there are: {}", name, fmt::join(names, ", ")));
}

json Scores::to_json() const {
  json j = json::object();
  for (const auto& [k, v] : values) j[k] = v;
  return j;
}

std::string Scores::to_string() const {
  std::vector<std::string> parts;
  for (const auto& [k, v] : values) {
    if (k == metric::kAccuracy || k == metric::kTokenAccuracy) {
      parts.push_back(fmt::format("{} {:.2f}%", k == metric::kAccuracy ? "accuracy" : "token accuracy", 100 * v));
    } else if (k == metric::kMacroF1 || k == metric::kBitsPerByte) {
      parts.push_back(fmt::format("{} {:.4f}", metric::info(k).heading, v));
    } else {
      parts.push_back(fmt::format("{} {:.4f}", k, v));
    }
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

std::shared_ptr<data::Augmentation> Task::augmentation(const std::string& name, double mix_alpha,
                                                     double mix_probability) const {
  if (name == "none") return nullptr;
  const auto fits = augmentations();
  if (std::find(fits.begin(), fits.end(), name) == fits.end()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("config: 'train.augment' = \"{}\" does not fit task '{}' ({}); it takes: none{}{}", name,
                            this->name(), title(), fits.empty() ? "" : ", ", fmt::join(fits, ", ")));
  }
  const auto mix = data::MixOptions(num_classes()).alpha(mix_alpha).probability(mix_probability);
  if (name == "shift_flip") {
    return std::make_shared<data::RandomShiftFlip>(data::RandomShiftFlipOptions().fill(blank_pixel()));
  }
  if (name == "cutmix") return std::make_shared<data::CutMix>(mix);
  return std::make_shared<data::TokenMix>(mix);
}

Scores Task::evaluate(Model& model, const data::TensorDataset& split, int64_t ece_bins) const {
  if (num_classes() > 0) {
    std::optional<CalibrationMetrics> calibration;
    if (ece_bins > 0) calibration.emplace(ece_bins);
    const auto m = evaluate_classifier(model, split, num_classes(), 512, calibration ? &*calibration : nullptr);
    Scores s{{{metric::kAccuracy, m.accuracy()}, {metric::kMacroF1, m.macro_f1()}}};
    if (calibration) s.ece = calibration->ece();
    return s;
  }
  const auto m = evaluate_language_model(model, split);
  return {{{metric::kBitsPerByte, m.bits_per_byte()},
           {metric::kPerplexity, m.perplexity()},
           {metric::kTokenAccuracy, m.token_accuracy()}}};
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"fashion_mnist", "spam", "byte_lm", "custom"};
  return names;
}

const Task& task_named(const std::string& name) {
  static const FashionMnistTask fashion_mnist;
  static const SpamTask spam;
  static const ByteLmTask byte_lm;
  if (name == "spam") return spam;
  if (name == "byte_lm") return byte_lm;
  if (name == "fashion_mnist") return fashion_mnist;
  if (name == "custom") return custom_task(0);
  throw Error(ErrorCategory::kConfig,
              fmt::format("config: 'task' = \"{}\" is not a task; use one of: {}", name, fmt::join(task_names(), ", ")));
}

const Task& task_of(const json& config) {
  const std::string name = config.value("task", std::string("fashion_mnist"));
  if (name != "custom") return task_named(name);
  return custom_task(config.contains("data") ? config["data"].value("num_classes", int64_t{0}) : 0);
}

}  // namespace kd::app
