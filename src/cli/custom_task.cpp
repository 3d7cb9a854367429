#include "custom_task.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/eval_mode.h"
#include "kd/core/generators_kept.h"
#include "kd/core/script_model.h"
#include "kd/data/safetensors.h"
#include "kd/losses/registry.h"
#include "kd/models/causal_lm.h"
#include "kd/models/cnn.h"
#include "kd/models/transformer_encoder.h"
#include "config.h"

namespace kd::app {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// One split from a safetensors file the config names at `key` ("data.train").
data::TensorDataset read_split(const std::string& path, const std::string& key) {
  if (!fs::exists(path)) {
    throw Error(ErrorCategory::kFile,
                fmt::format("{} '{}' does not exist; give a safetensors file with tensors \"inputs\" and \"targets\" "
                            "(--set {}=FILE.safetensors)",
                            key, path, key));
  }
  data::SafetensorsFile file;
  try {
    file = data::read_safetensors(path);
  } catch (const Error& e) {  // the reader names the file and tensor; say which split it was
    throw Error(e.category(), fmt::format("{}: {}", key, e.message()));
  }
  std::vector<std::string> names;
  for (const auto& [name, _] : file.tensors) names.push_back(name);
  for (const auto& name : names) {
    if (name != "inputs" && name != "targets" && name != "mask") {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("{} '{}': tensor '{}' is not one the custom task reads; a split holds \"inputs\" [N, ...], "
                              "\"targets\" [N] or [N, L] and optionally \"mask\" [N, L] (it holds: {})",
                              key, path, name, fmt::join(names, ", ")));
    }
  }
  for (const char* required : {"inputs", "targets"}) {
    if (!file.tensors.count(required)) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("{} '{}' has no tensor \"{}\" (it holds: {}); a split holds \"inputs\" [N, ...], \"targets\" "
                              "[N] or [N, L] and optionally \"mask\" [N, L]",
                              key, path, required, names.empty() ? "nothing" : fmt::format("{}", fmt::join(names, ", "))));
    }
  }
  data::TensorDataset d;
  d.inputs = file.tensors.at("inputs");
  d.targets = file.tensors.at("targets");
  auto shape = [](const torch::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); };
  if (d.inputs.dim() < 1 || d.targets.dim() < 1 || d.inputs.size(0) != d.targets.size(0)) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}': \"inputs\" {} and \"targets\" {} must hold the same number of examples N in "
                            "their first dimension",
                            key, path, shape(d.inputs), shape(d.targets)));
  }
  if (d.inputs.size(0) == 0) {
    throw Error(ErrorCategory::kFormat, fmt::format("{} '{}' holds no examples (N = 0)", key, path));
  }
  if (d.targets.is_floating_point() || d.targets.scalar_type() == torch::kBool || d.targets.dim() > 2) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}': \"targets\" must be integer class ids [N] or token ids [N, L], got {} {}", key,
                            path, torch::toString(d.targets.scalar_type()), shape(d.targets)));
  }
  if (d.targets.dim() == 2 && (d.inputs.dim() != 2 || d.inputs.size(1) != d.targets.size(1))) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}': token \"targets\" {} need \"inputs\" of the same shape [N, L], got {}", key, path,
                            shape(d.targets), shape(d.inputs)));
  }
  d.targets = d.targets.to(torch::kLong);
  // Token ids index embeddings, which take int64 (PyTorch's convention); real-valued inputs stay as they are.
  if (!d.inputs.is_floating_point() && d.inputs.scalar_type() != torch::kBool) d.inputs = d.inputs.to(torch::kLong);
  if (file.tensors.count("mask")) {
    const auto& m = file.tensors.at("mask");
    if (m.dim() != 2 || d.inputs.dim() < 2 || m.size(0) != d.inputs.size(0) || m.size(1) != d.inputs.size(1)) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("{} '{}': \"mask\" {} must be [N, L], the first two dimensions of \"inputs\" {}", key, path,
                              shape(m), shape(d.inputs)));
    }
    d.mask = m.to(torch::kFloat32);
  }
  return d;
}

// The examples of `d` at positions [begin, end) of `order`.
data::TensorDataset part(const data::TensorDataset& d, const std::vector<int64_t>& order, size_t begin, size_t end) {
  std::vector<int64_t> idx(order.begin() + static_cast<std::ptrdiff_t>(begin), order.begin() + static_cast<std::ptrdiff_t>(end));
  return d.select(torch::tensor(idx, torch::kLong));
}

// A split whose examples, targets or mask do not fit the training split's.
void check_like_train(const data::TensorDataset& train, const data::TensorDataset& d, const std::string& key,
                      const std::string& path) {
  auto tail = [](const torch::Tensor& t) { return std::vector<int64_t>(t.sizes().begin() + 1, t.sizes().end()); };
  if (tail(train.inputs) != tail(d.inputs) || train.inputs.scalar_type() != d.inputs.scalar_type() ||
      train.targets.dim() != d.targets.dim() || train.mask.defined() != d.mask.defined()) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}' does not match data.train: inputs {} [N, {}] / targets [{}-D]{} there, {} [N, {}] / "
                            "[{}-D]{} here",
                            key, path, torch::toString(train.inputs.scalar_type()), fmt::join(tail(train.inputs), ", "),
                            train.targets.dim(), train.mask.defined() ? " / mask" : "",
                            torch::toString(d.inputs.scalar_type()), fmt::join(tail(d.inputs), ", "), d.targets.dim(),
                            d.mask.defined() ? " / mask" : ""));
  }
}

void check_classes(const data::TensorDataset& d, int64_t classes, const std::string& key, const std::string& path) {
  if (classes <= 0) return;
  const auto real = d.targets.masked_select(d.targets != -100);  // -100: HardLabelCE's "no label"
  if (real.numel() == 0) return;
  const int64_t lo = real.min().item<int64_t>(), hi = real.max().item<int64_t>();
  if (lo < 0 || hi >= classes) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}': \"targets\" hold class ids {}..{}, outside 0..{} (data.num_classes = {}, given or "
                            "inferred from data.train); class ids must be 0..C-1 (or -100 for no label): --set "
                            "data.num_classes={} if the classes are more",
                            key, path, lo, hi, classes - 1, classes, hi + 1));
  }
}

// `section`: "teacher" or "student", whose torchscript key names the file.
std::shared_ptr<ScriptModel> load_script(const ModelConfig& config, const char* section) {
  const std::string& path = config.torchscript;
  if (path.empty()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("config: task \"custom\" needs '{}.torchscript': a TorchScript file of the {} "
                            "(torch.jit.save(torch.jit.script(model), '{}.pt')); --set {}.torchscript=FILE",
                            section, section, section, section));
  }
  return ScriptModel::load(path);
}

// What a built-in student's size and kd-train export need of data.train, read once per version of the file.
struct TrainFacts {
  torch::Tensor first_input;  // [1, ...]
  int64_t max_token_id = -1;  // integer inputs (and [N, L] targets) only
};

const TrainFacts& train_facts(const std::string& path) {
  static std::map<std::string, TrainFacts> facts;
  std::error_code ec;
  const auto stamp = fs::last_write_time(path, ec).time_since_epoch().count();
  const std::string key = fmt::format("{}|{}|{}", path, ec ? 0 : fs::file_size(path, ec), stamp);
  auto it = facts.find(key);
  if (it != facts.end()) return it->second;
  const auto d = read_split(path, "data.train");
  TrainFacts f;
  f.first_input = d.inputs.slice(0, 0, 1).clone();
  if (!d.inputs.is_floating_point()) {
    f.max_token_id = d.inputs.max().item<int64_t>();
    if (d.targets.dim() == 2) f.max_token_id = std::max(f.max_token_id, d.targets.max().item<int64_t>());
  }
  return facts.emplace(key, std::move(f)).first->second;
}

class CustomTask : public Task {
 public:
  explicit CustomTask(int64_t num_classes) : classes_(num_classes) {}
  std::string name() const override { return "custom"; }
  std::string title() const override { return "custom (TorchScript models, safetensors data)"; }
  int64_t num_classes() const override { return classes_; }
  bool trains_teacher() const override { return false; }

  // custom: the user's TorchScript teacher and student and safetensors data (custom_task.h); one stage of soft
  // targets (KL at T = 3) and hard labels, which fits any classifier or language model.
  json defaults() const override {
    json d = shared_config_defaults();
    d["task"] = name();
    d["out"] = "runs/custom";
    // validation / test "" = held out of train (validation_fraction, drawn with split_seed) / the validation split.
    // num_classes 0 = max(train targets) + 1 for [N] class ids; [N, L] token targets are a language model.
    d["data"] = {{"train", ""}, {"validation", ""}, {"test", ""}, {"num_classes", 0}, {"validation_fraction", 0.1},
                 {"split_seed", 0}, {"limit", 0}, {"student_labels", 1.0}};
    d["teacher"]["torchscript"] = "";  // the teacher's file, used as it is
    // torchscript: the student's file; or model: a library architecture sized from the data ("depthwise_cnn" /
    // "cnn" for images: width1, width2, hidden; "transformer" / "causal_lm" for token ids: layers, d_model, heads,
    // ffn, dropout, vocab).
    d["student"] = {{"torchscript", ""}, {"model", ""},   {"width1", 16},  {"width2", 32},    {"hidden", 256}, {"layers", 2},
                    {"d_model", 64},     {"heads", 2},    {"ffn", 0},      {"dropout", 0.1},  {"vocab", 256}};
    d["stages"] = json::parse(R"([
      {"name": "distill", "epochs": 3,
       "losses": [{"type": "temperature_kl", "name": "kl", "weight": 0.8, "temperature": 3.0},
                  {"type": "hard_label_ce", "name": "ce", "weight": 0.2}]}
    ])");
    d["train"]["batch_size"] = 64;
    d["train"]["log_every"] = 50;
    return d;
  }
  std::vector<std::string> student_models() const override {
    return {"", "depthwise_cnn", "cnn", "transformer", "causal_lm"};
  }

  Splits load_splits(const RunConfig& config, const torch::Device& device) const override {
    const DataConfig& d = config.data;
    const std::string &train_path = d.train, &val_path = d.validation, &test_path = d.test;
    if (train_path.empty()) {
      throw Error(ErrorCategory::kConfig,
                  "config: task \"custom\" needs 'data.train': a safetensors file with tensors \"inputs\" and "
                  "\"targets\"; --set data.train=FILE.safetensors");
    }
    Splits s;
    s.train = read_split(train_path, "data.train");
    check_classes(s.train, classes_, "data.train", train_path);
    if (!val_path.empty()) {
      s.validation = read_split(val_path, "data.validation");
      check_like_train(s.train, s.validation, "data.validation", val_path);
      check_classes(s.validation, classes_, "data.validation", val_path);
    } else {
      // Held out with split_seed, so every run of the config trains on the same examples.
      const int64_t n = s.train.size();
      if (n < 2) {
        throw Error(ErrorCategory::kFormat,
                    fmt::format("data.train '{}' holds {} example: too few to hold a validation split out; give "
                                "data.validation",
                                train_path, n));
      }
      const double fraction = d.validation_fraction;
      const auto held = static_cast<size_t>(std::clamp<int64_t>(std::llround(fraction * n), 1, n - 1));
      const auto order = data::permutation(n, d.split_seed);
      s.validation = part(s.train, order, 0, held);
      s.train = part(s.train, order, held, order.size());
    }
    if (!test_path.empty()) {
      s.test = read_split(test_path, "data.test");
      check_like_train(s.train, s.test, "data.test", test_path);
      check_classes(s.test, classes_, "data.test", test_path);
    } else {
      s.test = s.validation;
    }
    spdlog::info("custom data: {} train ({}), {} validation ({}), {} test ({}) examples; inputs {} [N, {}]; {}; "
                 "device {}; {} threads",
                 s.train.size(), train_path, s.validation.size(),
                 val_path.empty() ? fmt::format("held out of data.train, fraction {}", d.validation_fraction)
                                  : val_path,
                 s.test.size(), test_path.empty() ? "the validation split: no data.test" : test_path,
                 torch::toString(s.train.inputs.scalar_type()),
                 fmt::join(std::vector<int64_t>(s.train.inputs.sizes().begin() + 1, s.train.inputs.sizes().end()), ", "),
                 classes_ > 0 ? fmt::format("{} classes", classes_) : std::string("token targets (language model)"),
                 device.str(), torch::get_num_threads());
    return capped(std::move(s), d, device);
  }

  std::shared_ptr<Model> make_teacher(const RunConfig& config, std::string* name) const override {
    auto m = load_script(config.teacher.shape, "teacher");
    if (name) *name = fmt::format("TorchScript {}", fs::path(m->source()).filename().string());
    return m;
  }

  std::shared_ptr<Model> make_student(const RunConfig& config, bool activation_quant, std::string* name) const override {
    const std::string &model = config.student.model, &file = config.student.torchscript;
    if (!model.empty() && !file.empty()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("config: 'student.model' = \"{}\" and 'student.torchscript' = \"{}\" both name the "
                              "student; keep one",
                              model, file));
    }
    if (!model.empty()) return built_in_student(config, activation_quant, name);
    auto m = load_script(config.student, "student");
    // Its parameters are what training changes, whatever requires_grad the file was saved with.
    for (auto& p : m->parameters()) p.set_requires_grad(true);
    if (name) *name = fmt::format("TorchScript {}", fs::path(m->source()).filename().string());
    return m;
  }

  // student.model: a library architecture sized from the training inputs and the task's classes.
  std::shared_ptr<Model> built_in_student(const RunConfig& config, bool activation_quant, std::string* name) const {
    const ModelConfig& sc = config.student;
    const std::string& model = sc.model;
    const auto x = example_input(config);  // [1, ...] of the training inputs
    auto shape = fmt::format("[N, {}]", fmt::join(std::vector<int64_t>(x.sizes().begin() + 1, x.sizes().end()), ", "));
    auto refuse = [&](const std::string& why) {
      return Error(ErrorCategory::kConfig,
                   fmt::format("config: 'student.model' = \"{}\" {}; the training inputs are {} {} and the targets {} "
                               "(give the student as student.torchscript instead)",
                               model, why, torch::toString(x.scalar_type()), shape,
                               classes_ > 0 ? fmt::format("{} class ids", classes_) : std::string("token ids")));
    };
    try {
      if (model == "depthwise_cnn" || model == "cnn") {
        if (x.dim() != 4 || !x.is_floating_point() || x.size(2) != x.size(3) || x.size(2) % 4 != 0 || classes_ <= 0) {
          throw refuse("takes images [N, C, S, S] (S divisible by 4) with class targets");
        }
        if (name) *name = fmt::format("{}({}/{})", model == "cnn" ? "Cnn" : "DepthwiseCnnStudent", sc.width1, sc.width2);
        if (model == "cnn") {
          return models::CnnTeacher(models::CnnTeacherOptions().in_channels(x.size(1)).image_size(x.size(2))
                                        .width1(sc.width1).width2(sc.width2).hidden(sc.hidden)
                                        .num_classes(classes_).activation_quant(activation_quant)).ptr();
        }
        return models::DepthwiseCnnStudent(models::DepthwiseCnnStudentOptions().in_channels(x.size(1))
                                               .image_size(x.size(2)).width1(sc.width1).width2(sc.width2)
                                               .num_classes(classes_).activation_quant(activation_quant)).ptr();
      }
      if (x.dim() != 2 || x.is_floating_point()) throw refuse("takes token ids [N, L]");
      const int64_t vocab = sc.vocab, ids = max_token_id(config) + 1;
      if (ids > vocab) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("config: 'student.vocab' = {} is smaller than the data's token ids (up to {} in "
                                "data.train): --set student.vocab={}",
                                vocab, ids - 1, ids));
      }
      if (model == "transformer") {
        if (classes_ <= 0) throw refuse("classifies sequences: it needs [N] class targets");
        if (name) *name = fmt::format("TransformerEncoder({}x{}, {} heads)", sc.layers, sc.d_model, sc.heads);
        return models::TransformerEncoder(models::TransformerEncoderOptions().vocab(sc.vocab).layers(sc.layers)
                                              .d_model(sc.d_model).heads(sc.heads).ffn(sc.ffn)
                                              .dropout(sc.dropout).max_len(x.size(1)).num_classes(classes_)).ptr();
      }
      if (classes_ > 0) throw refuse("predicts the next token: it needs [N, L] token targets");
      if (name) *name = fmt::format("CausalLM({}x{}, {} heads)", sc.layers, sc.d_model, sc.heads);
      return models::CausalLM(models::CausalLMOptions().vocab(sc.vocab).layers(sc.layers).d_model(sc.d_model)
                                  .heads(sc.heads).ffn(sc.ffn).dropout(sc.dropout).max_len(x.size(1))).ptr();
    } catch (const Error& e) {
      if (e.category() == ErrorCategory::kConfig) throw;
      throw Error(ErrorCategory::kConfig, fmt::format("config: 'student': {}", e.message()));
    }
  }

  torch::Tensor example_input(const RunConfig& config) const override {
    return train_facts(config.data.train).first_input;
  }

  // The largest token id of the training inputs and (token) targets.
  static int64_t max_token_id(const RunConfig& config) { return train_facts(config.data.train).max_token_id; }
  int64_t pad_token() const override { return -1; }

 protected:
  std::vector<std::string> augmentations() const override { return {}; }

 private:
  int64_t classes_;
};

// Whether a registered loss learns a projection between paired layers of different widths, given as its
// teacher_dims / student_dims keys (feature_l2, or a plugin loss with the same keys).
bool projects_widths(const std::string& type) {
  const auto& registry = LossRegistry::global();
  if (!registry.contains(type)) return false;
  const auto& keys = registry.keys(type);
  auto has = [&](const char* key) { return std::find(keys.begin(), keys.end(), key) != keys.end(); };
  return has("teacher_dims") && has("student_dims");
}

// A hidden state's feature width: channels of [N, C, H, W], the last dimension otherwise.
int64_t feature_width(const torch::Tensor& t) { return t.dim() == 4 ? t.size(1) : t.size(-1); }

}  // namespace

const Task& custom_task(int64_t classes) {
  static std::map<int64_t, std::unique_ptr<CustomTask>> by_classes;
  auto& task = by_classes[classes];
  if (!task) task = std::make_unique<CustomTask>(classes);
  return *task;
}

json with_custom_classes(json config) {
  json& d = config["data"];
  if (d["num_classes"].get<int64_t>() > 0) return config;
  const std::string path = d["train"];
  if (path.empty()) {
    throw Error(ErrorCategory::kConfig,
                "config: task \"custom\" needs 'data.train': a safetensors file with tensors \"inputs\" and "
                "\"targets\"; --set data.train=FILE.safetensors");
  }
  const auto train = read_split(path, "data.train");
  if (train.targets.dim() == 1) {
    const auto real = train.targets.masked_select(train.targets != -100);
    if (real.numel() == 0 || real.min().item<int64_t>() < 0) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("data.train '{}': \"targets\" must be class ids 0..C-1 (or -100 for no label)", path));
    }
    d["num_classes"] = real.max().item<int64_t>() + 1;
  }
  return config;
}

RunConfig with_feature_dims(const RunConfig& config, const data::TensorDataset& train, const torch::Device& device) {
  json document = config.document;
  std::vector<json*> terms;
  for (auto& stage : document["stages"]) {
    for (auto& loss : stage["losses"]) {
      if (projects_widths(loss.value("type", "")) && !loss.contains("teacher_dims") && !loss.contains("student_dims") &&
          loss.contains("teacher_layers") && loss.contains("student_layers")) {
        terms.push_back(&loss);
      }
    }
  }
  if (terms.empty()) return config;
  const GeneratorsKept kept;
  const torch::NoGradGuard no_grad;
  auto teacher = config.task->make_teacher(config);
  auto student = config.task->make_student(config, false);
  teacher->to(device);
  student->to(device);
  const EvalModeGuard teacher_eval(*teacher), student_eval(*student);
  const auto batch = train.select(torch::arange(std::min<int64_t>(2, train.size()), torch::kLong));
  const auto t_out = teacher->forward(batch.inputs);
  const auto s_out = student->forward(batch.inputs);
  auto width = [](const std::vector<torch::Tensor>& layers, int64_t index) -> int64_t {
    const auto n = static_cast<int64_t>(layers.size());
    const int64_t i = index < 0 ? index + n : index;
    return i >= 0 && i < n ? feature_width(layers[static_cast<size_t>(i)]) : 0;  // out of range: the check names it
  };
  for (json* term : terms) {
    const auto tl = (*term)["teacher_layers"], sl = (*term)["student_layers"];
    if (!tl.is_array() || !sl.is_array() || tl.size() != sl.size()) continue;  // the stage check names the problem
    std::vector<int64_t> td, sd;
    bool differ = false;
    for (size_t i = 0; i < tl.size(); ++i) {
      if (!tl[i].is_number_integer() || !sl[i].is_number_integer()) return config;
      const int64_t t = width(t_out.hidden_states, tl[i].get<int64_t>());
      const int64_t s = width(s_out.hidden_states, sl[i].get<int64_t>());
      if (t == 0 || s == 0) return config;
      differ = differ || t != s;
      td.push_back(t);
      sd.push_back(s);
    }
    if (!differ) continue;
    (*term)["teacher_dims"] = td;
    (*term)["student_dims"] = sd;
    spdlog::info("{} '{}': teacher widths [{}], student widths [{}] (from one forward pass): a learned "
                 "projection per pair",
                 (*term)["type"].get<std::string>(), term->value("name", (*term)["type"].get<std::string>()),
                 fmt::join(td, ", "), fmt::join(sd, ", "));
  }
  return parse_run_config(document);
}

}  // namespace kd::app
