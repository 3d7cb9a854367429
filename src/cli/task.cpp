#include "task.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "custom_task.h"
#include "kd/core/error.h"
#include "kd/data/fashion_mnist.h"
#include "kd/data/mixing.h"
#include "kd/train/metric_names.h"
#include "kd/data/spam_assassin.h"
#include "kd/models/causal_lm.h"
#include "kd/models/cnn.h"
#include "kd/models/transformer_encoder.h"
#include "kd/train/calibration.h"
#include "kd/train/metrics.h"

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
Options transformer_shape(Options o, const json& s) {
  return o.layers(s["layers"]).d_model(s["d_model"]).heads(s["heads"]).ffn(s["ffn"]).dropout(s["dropout"]);
}

std::string transformer_name(const char* kind, const json& s) {
  return fmt::format("{}({}x{}, {} heads)", kind, s["layers"].get<int64_t>(), s["d_model"].get<int64_t>(),
                     s["heads"].get<int64_t>());
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

class FashionMnistTask : public Task {
 public:
  std::string name() const override { return "fashion_mnist"; }
  std::string title() const override { return "Fashion-MNIST"; }
  int64_t num_classes() const override { return 10; }

  Splits load_splits(const json& config, const torch::Device& device) const override {
    const json& d = config["data"];
    auto opts = data::FashionMnistOptions()
                    .root(d["root"])
                    .limit(d["limit"])
                    .validation_size(d["validation_size"])
                    .split_seed(d["split_seed"]);
    Splits s{data::load_fashion_mnist(data::Split::kTrain, opts), data::load_fashion_mnist(data::Split::kValidation, opts),
             data::load_fashion_mnist(data::Split::kTest, opts)};
    spdlog::info("Fashion-MNIST: {} train, {} validation, {} test images; device {}; {} threads", s.train.size(),
                 s.validation.size(), s.test.size(), device.str(), torch::get_num_threads());
    return {to_device(s.train, device), to_device(s.validation, device), to_device(s.test, device)};
  }

  std::shared_ptr<Model> make_teacher(const json&, std::string* name) const override {
    if (name) *name = "CnnTeacher";
    return models::CnnTeacher(models::CnnTeacherOptions()).ptr();
  }

  std::shared_ptr<Model> make_student(const json& config, bool activation_quant, std::string* name) const override {
    const json& sc = config["student"];
    if (sc["model"] == "cnn") {
      if (name) {
        *name = fmt::format("Cnn({}/{}/{})", sc["width1"].get<int64_t>(), sc["width2"].get<int64_t>(),
                            sc["hidden"].get<int64_t>());
      }
      return models::CnnTeacher(models::CnnTeacherOptions()
                                    .width1(sc["width1"])
                                    .width2(sc["width2"])
                                    .hidden(sc["hidden"])
                                    .activation_quant(activation_quant))
          .ptr();
    }
    if (name) {
      *name = sc["width1"] == 16 && sc["width2"] == 32
                  ? "DepthwiseCnnStudent"
                  : fmt::format("DepthwiseCnnStudent({}/{})", sc["width1"].get<int64_t>(), sc["width2"].get<int64_t>());
    }
    return models::DepthwiseCnnStudent(models::DepthwiseCnnStudentOptions()
                                           .width1(sc["width1"])
                                           .width2(sc["width2"])
                                           .activation_quant(activation_quant))
        .ptr();
  }

  torch::Tensor example_input(const json&) const override { return torch::zeros({1, 1, 28, 28}); }
  int64_t pad_token() const override { return -1; }
  std::optional<std::pair<double, double>> input_range() const override {
    return std::make_pair(data::kFashionMnistBlank, (1.0 - data::kFashionMnistMean) / data::kFashionMnistStd);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {"shift_flip", "cutmix"}; }
  double blank_pixel() const override { return data::kFashionMnistBlank; }
};

// Both text tasks read the same corpus; "data" holds where it is and how it is split.
data::SpamAssassinOptions corpus_options(const json& d) {
  auto o = data::SpamAssassinOptions().root(d["root"]).split_seed(d["split_seed"]);
  if (d.contains("max_len")) o.max_len(d["max_len"]);
  if (d.contains("context")) o.context(d["context"]);
  return o;
}

// One task's three splits of the corpus (`make`: classification or language_model), capped as "data" says.
Splits corpus_splits(const json& d, const torch::Device& device,
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

  Splits load_splits(const json& config, const torch::Device& device) const override {
    const json& d = config["data"];
    std::string dir;
    const Splits s = corpus_splits(d, device, &data::SpamAssassin::classification, dir);
    auto spam = [](const data::TensorDataset& x) { return x.targets.sum().item<int64_t>(); };
    spdlog::info("SpamAssassin spam/ham ({}): {} train ({} spam), {} validation ({} spam), {} test ({} spam) mails, "
                 "first {} bytes of each; device {}; {} threads",
                 dir, s.train.size(), spam(s.train), s.validation.size(), spam(s.validation),
                 s.test.size(), spam(s.test), d["max_len"].get<int64_t>(), device.str(), torch::get_num_threads());
    return s;
  }

  std::shared_ptr<Model> make_teacher(const json& config, std::string* name) const override {
    return encoder(config["teacher"], config, false, "teacher", name);
  }
  std::shared_ptr<Model> make_student(const json& config, bool, std::string* name) const override {
    return encoder(config["student"], config, true, "student", name);
  }

  torch::Tensor example_input(const json& config) const override {
    return torch::ones({1, config["data"]["max_len"].get<int64_t>()}, torch::kLong);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {"token_mix"}; }

 private:
  static std::shared_ptr<Model> encoder(const json& s, const json& config, bool student, const char* section,
                                        std::string* name) {
    if (name) {
      *name = transformer_name("TransformerEncoder", s);
      if (s.value("attention", "softmax") == "linear") name->insert(name->size() - 1, ", linear attention");
    }
    return build(section, [&]() -> std::shared_ptr<Model> {
      auto o = transformer_shape(models::TransformerEncoderOptions(), s)
                   .pad_token(0)
                   .num_classes(2)
                   .max_len(config["data"]["max_len"]);
      if (student) {
        o.attention(models::kAttentionKindNames.at(s["attention"].get<std::string>(), "student.attention"))
            .dynamic_depth(s["dynamic_depth"])
            .depth_thresholds(s["depth_thresholds"].get<std::vector<int64_t>>())
            .depth_layers(s["depth_layers"].get<std::vector<int64_t>>());
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

  Splits load_splits(const json& config, const torch::Device& device) const override {
    const json& d = config["data"];
    std::string dir;
    const Splits s = corpus_splits(d, device, &data::SpamAssassin::language_model, dir);
    const int64_t context = d["context"];
    spdlog::info("SpamAssassin byte LM ({}): windows of {} bytes: {} train, {} validation, {} test ({} / {} / {} "
                 "predicted bytes); device {}; {} threads",
                 dir, context, s.train.size(), s.validation.size(), s.test.size(),
                 s.train.size() * context, s.validation.size() * context, s.test.size() * context, device.str(),
                 torch::get_num_threads());
    return s;
  }

  std::shared_ptr<Model> make_teacher(const json& config, std::string* name) const override {
    return lm(config["teacher"], config, "teacher", name);
  }
  std::shared_ptr<Model> make_student(const json& config, bool, std::string* name) const override {
    return lm(config["student"], config, "student", name);
  }

  torch::Tensor example_input(const json& config) const override {
    return torch::zeros({1, config["data"]["context"].get<int64_t>()}, torch::kLong);
  }

 protected:
  std::vector<std::string> augmentations() const override { return {}; }  // windows of a stream: nothing to mix

 private:
  static std::shared_ptr<Model> lm(const json& s, const json& config, const char* section, std::string* name) {
    if (name) *name = transformer_name("CausalLM", s);
    return build(section, [&]() -> std::shared_ptr<Model> {
      return models::CausalLM(transformer_shape(models::CausalLMOptions(), s).max_len(config["data"]["context"])).ptr();
    });
  }
};

}  // namespace

Splits capped(Splits s, const json& d, const torch::Device& device) {
  const int64_t limit = d["limit"], eval_limit = d.value("eval_limit", int64_t{0});
  const int64_t eval_cap = eval_limit > 0 ? eval_limit : limit;
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

std::shared_ptr<data::Augmentation> Task::augmentation(const json& train) const {
  const std::string name = train["augment"];
  if (name == "none") return nullptr;
  const auto fits = augmentations();
  if (std::find(fits.begin(), fits.end(), name) == fits.end()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("config: 'train.augment' = \"{}\" does not fit task '{}' ({}); it takes: none{}{}", name,
                            this->name(), title(), fits.empty() ? "" : ", ", fmt::join(fits, ", ")));
  }
  const auto mix = data::MixOptions(num_classes()).alpha(train["mix_alpha"]).probability(train["mix_probability"]);
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

const Task& task_of(const json& config) {
  static const FashionMnistTask fashion_mnist;
  static const SpamTask spam;
  static const ByteLmTask byte_lm;
  const std::string name = config.value("task", std::string("fashion_mnist"));
  if (name == "spam") return spam;
  if (name == "byte_lm") return byte_lm;
  if (name == "fashion_mnist") return fashion_mnist;
  if (name == "custom") return custom_task(config);
  throw Error(ErrorCategory::kConfig,
              fmt::format("config: 'task' = \"{}\" is not a task; use one of: {}", name, fmt::join(task_names(), ", ")));
}

}  // namespace kd::app
