// kd-train: the command-line front end of kdistill.
//
//   kd-train list
//   kd-train distill [--config FILE]... [--set key.path=value]... [--out DIR] [--device D] [--seed N] [--threads N] [--resume]
//
// With no arguments `distill` runs the default recipe on Fashion-MNIST: train a
// CNN teacher from scratch (no pretrained weights can be downloaded), then
// distill a depthwise-separable student with the progressive three-stage recipe
// (features -> + attention -> + KL(T=3) and hard labels; kd::progressive3).
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/models/cnn.h"
#include "kd/train/console_logger.h"
#include "kd/train/metrics.h"
#include "kd/train/metrics_log.h"
#include "kd/train/staged_trainer.h"
#include "config.h"
#include "stage_config.h"

namespace fs = std::filesystem;

namespace {

using json = nlohmann::json;

// The resolved configuration's scalar settings, typed (see config.cpp for the schema and defaults).
struct DistillArgs {
  explicit DistillArgs(const json& c)
      : out(c["out"]), data_root(c["data"]["root"]), device(c["train"]["device"]),
        teacher_epochs(c["teacher"]["epochs"]), batch_size(c["train"]["batch_size"]), limit(c["data"]["limit"]),
        validation_size(c["data"]["validation_size"]), split_seed(c["data"]["split_seed"]),
        threads(c["train"]["threads"]), log_every(c["train"]["log_every"]),
        checkpoint_every(c["train"]["checkpoint_every"]), seed(c["train"]["seed"]), lr(c["train"]["lr"]),
        weight_decay(c["train"]["weight_decay"]),
        precision(c["train"]["precision"] == "bf16" ? kd::Precision::kBFloat16 : kd::Precision::kFloat32) {}
  std::string out, data_root, device;
  int64_t teacher_epochs, batch_size, limit, validation_size;
  uint64_t split_seed;
  int threads;
  int64_t log_every, checkpoint_every;
  uint64_t seed;
  double lr, weight_decay;
  kd::Precision precision;
};

void save_module(const std::shared_ptr<torch::nn::Module>& module, const fs::path& path) {
  kd::write_atomically(path.string(), [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    module->save(archive);
    archive.save_to(tmp);
  });
}

void save_text(const fs::path& path, const std::string& text) {
  kd::write_atomically(path.string(), [&](const std::string& tmp) {
    std::ofstream out(tmp);
    out << text;
    if (!out.flush()) throw std::runtime_error("write failed");
  });
}

// What decides the training result: everything but where it goes and how it is shown or scheduled.
std::string config_fingerprint(json config) {
  config.erase("out");
  for (const char* k : {"threads", "device", "log_every", "checkpoint_every"}) config["train"].erase(k);
  const std::string text = config.dump();
  return fmt::format("{:08x}", crc32(0L, reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size())));
}

// Wall time per stage, for the summary.
struct StageTimer : kd::Callback {
  void on_stage_begin(const kd::Stage& s, const kd::StepInfo& i) override {
    start = std::chrono::steady_clock::now();
    first_step = i.global_step;
  }
  void on_stage_end(const kd::Stage& s, const kd::StepInfo& i) override {
    rows.push_back({s.name(), i.global_step - first_step,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
  }
  struct Row {
    std::string name;
    int64_t steps;
    double seconds;
  };
  std::chrono::steady_clock::time_point start;
  int64_t first_step = 0;
  std::vector<Row> rows;
};

kd::StagedTrainerOptions trainer_options(const DistillArgs& a) {
  return kd::StagedTrainerOptions()
      .batch_size(a.batch_size)
      .weight_decay(a.weight_decay)
      .clip_norm(0)
      .seed(a.seed)
      .precision(a.precision)
      .num_classes(10);
}

json model_row(const std::string& name, const torch::nn::Module& m, const kd::ClassificationMetrics& test) {
  return {{"model", name},
          {"parameters", kd::parameter_count(m)},
          {"parameter_bytes", kd::parameter_bytes(m)},
          {"test_accuracy", test.accuracy()},
          {"test_macro_f1", test.macro_f1()}};
}

int run_distill(const json& config, bool resume) {
  const DistillArgs a(config);
  // LibTorch's own default here is sometimes 1 thread; use every core unless told otherwise.
  torch::set_num_threads(a.threads > 0 ? a.threads : std::max(1u, std::thread::hardware_concurrency()));
  torch::manual_seed(a.seed);
  const torch::Device device = kd::resolve_device(a.device);
  const auto specs = kd::app::stages_from_json(config["stages"], "config");
  const fs::path out(a.out);
  fs::create_directories(out);
  save_text(out / "config.json", config.dump(2) + "\n");

  auto data_opts = kd::data::FashionMnistOptions()
                       .root(a.data_root)
                       .limit(a.limit)
                       .validation_size(a.validation_size)
                       .split_seed(a.split_seed);
  const auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, data_opts);
  const auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, data_opts);
  const auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest, data_opts);
  spdlog::info("Fashion-MNIST: {} train, {} validation, {} test images; device {}; {} threads", train.size(),
               val.size(), test.size(), device.str(), torch::get_num_threads());

  auto teacher_model = kd::models::CnnTeacher(kd::models::CnnTeacherOptions());
  teacher_model->to(device);
  const fs::path teacher_path = out / "teacher.pt";
  const auto t0 = std::chrono::steady_clock::now();
  if (fs::exists(teacher_path)) {
    torch::serialize::InputArchive archive;
    archive.load_from(teacher_path.string(), device);
    teacher_model->load(archive);
    spdlog::info("teacher: loaded {} (delete it to train a new one)", teacher_path.string());
  } else {
    spdlog::info("teacher: training CnnTeacher ({} parameters) from scratch for {} epoch(s)",
                 kd::parameter_count(*teacher_model), a.teacher_epochs);
    kd::StagedTrainer trainer(kd::Student(teacher_model.ptr()), std::nullopt,
                              {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE()))
                                   .epochs(a.teacher_epochs)
                                   .lr(a.lr)},
                              trainer_options(a));
    trainer.add_callback(std::make_shared<kd::ConsoleLogger>(a.log_every));
    fs::remove(out / "teacher_metrics.jsonl");
    trainer.add_callback(std::make_shared<kd::MetricsLog>((out / "teacher_metrics.jsonl").string()));
    teacher_model->options.attention_maps(false);  // cross-entropy needs logits only
    trainer.fit(train, &val);
    teacher_model->options.attention_maps(true);
    save_module(teacher_model.ptr(), teacher_path);
  }
  const double teacher_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kd::Teacher teacher(teacher_model.ptr());

  auto student_model = kd::models::DepthwiseCnnStudent(kd::models::DepthwiseCnnStudentOptions());
  student_model->to(device);
  std::vector<std::string> plan;
  for (const auto& s : specs) {
    std::vector<std::string> terms;
    for (const auto& l : s.losses()) terms.push_back(fmt::format("{}·{}", l.weight().describe(), l.term_name()));
    plan.push_back(fmt::format("{} ({}: {})", s.name(),
                               s.steps() > 0 ? fmt::format("{} steps", s.steps()) : fmt::format("{} ep", s.epochs()),
                               fmt::join(terms, " + ")));
  }
  spdlog::info("student: distilling DepthwiseCnnStudent ({} parameters) in {} stage(s): {}",
               kd::parameter_count(*student_model), specs.size(), fmt::join(plan, " -> "));
  auto timer = std::make_shared<StageTimer>();
  kd::StagedTrainer trainer(kd::Student(student_model.ptr()), teacher, kd::build_stages(specs),
                            trainer_options(a)
                                .checkpoint_dir((out / "checkpoints").string())
                                .checkpoint_every(a.checkpoint_every)
                                .fingerprint(config_fingerprint(config)));
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(a.log_every));
  if (!resume) fs::remove(out / "metrics.jsonl");  // a fresh run starts a fresh log; a resumed one appends
  trainer.add_callback(std::make_shared<kd::MetricsLog>((out / "metrics.jsonl").string()));
  trainer.add_callback(timer);
  const auto fit = trainer.fit(train, &val, resume);
  if (fit.resumed) spdlog::info("resumed from step {}", fit.resumed_from_step);
  save_module(student_model.ptr(), out / "student.pt");

  const auto tm = kd::evaluate_classifier(*teacher_model, test, 10);
  const auto sm = kd::evaluate_classifier(*student_model, test, 10);
  json summary = {{"models", {model_row("CnnTeacher", *teacher_model, tm), model_row("DepthwiseCnnStudent", *student_model, sm)}},
                  {"retained_accuracy", sm.accuracy() / tm.accuracy()},
                  {"teacher_seconds", teacher_seconds},
                  {"seed", a.seed},
                  {"test_images", test.size()},
                  {"resumed_from_step", fit.resumed ? json(fit.resumed_from_step) : json(nullptr)},
                  {"stages", json::array()}};
  for (size_t i = 0; i < timer->rows.size(); ++i) {
    const auto& r = timer->rows[i];
    json row = {{"stage", r.name}, {"steps", r.steps}, {"seconds", r.seconds}};
    for (const auto& e : fit.evaluations) {
      if (e.stage == r.name) row["validation_accuracy"] = e.metrics.at("accuracy"), row["validation_macro_f1"] = e.metrics.at("macro_f1");
    }
    summary["stages"].push_back(row);
  }
  save_text(out / "summary.json", summary.dump(2) + "\n");

  fmt::print("\nStages (validation set, {} images)\n", val.size());
  fmt::print("  {:<12} {:>7} {:>9} {:>10} {:>9}\n", "stage", "steps", "seconds", "accuracy", "macro-F1");
  for (const auto& row : summary["stages"]) {
    fmt::print("  {:<12} {:>7} {:>9.1f} {:>9.2f}% {:>9.4f}\n", row["stage"].get<std::string>(), row["steps"].get<int64_t>(),
               row["seconds"].get<double>(), 100 * row.value("validation_accuracy", 0.0), row.value("validation_macro_f1", 0.0));
  }
  fmt::print("\nResult (Fashion-MNIST test set, {} images)\n", test.size());
  fmt::print("  {:<20} {:>10} {:>10} {:>9} {:>9}\n", "model", "params", "KiB", "accuracy", "macro-F1");
  for (const auto& row : summary["models"]) {
    fmt::print("  {:<20} {:>10} {:>10.1f} {:>8.2f}% {:>9.4f}\n", row["model"].get<std::string>(),
               row["parameters"].get<int64_t>(), row["parameter_bytes"].get<int64_t>() / 1024.0,
               100 * row["test_accuracy"].get<double>(), row["test_macro_f1"].get<double>());
  }
  const double tp = kd::parameter_count(*teacher_model), sp = kd::parameter_count(*student_model);
  fmt::print("  student: {:.1f}% of the teacher's parameters, {:.1f}% of its accuracy\n", 100 * sp / tp,
             100 * sm.accuracy() / tm.accuracy());
  fmt::print("  written: {}/{{teacher.pt, student.pt, summary.json, config.json, metrics.jsonl, checkpoints/}}\n", a.out);
  return 0;
}

int run_list() {
  const auto& registry = kd::LossRegistry::global();
  fmt::print("losses (a stage's \"losses\": [{{\"type\": ..., \"weight\": ..., options}}]):\n");
  for (const auto& name : registry.names()) {
    fmt::print("  {:<20} {}\n", name, registry.description(name));
    if (!registry.keys(name).empty()) fmt::print("  {:<20} options: {}\n", "", fmt::join(registry.keys(name), ", "));
  }
  fmt::print("\nmodels:\n");
  fmt::print("  {:<20} {}\n", "CnnTeacher", "kd::models::CnnTeacher: 4 conv + 2 linear, 871 018 parameters (the teacher)");
  fmt::print("  {:<20} {}\n", "DepthwiseCnnStudent",
             "kd::models::DepthwiseCnnStudent: depthwise-separable, 16 650 parameters (the student)");
  fmt::print("\ndata sets:\n");
  fmt::print("  {:<20} {}\n", "fashion_mnist",
             "Fashion-MNIST IDX .gz files (Debian package dataset-fashion-mnist; data.root)");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kd-train: knowledge distillation with kdistill"};
  app.require_subcommand(1);
  std::vector<std::string> configs, sets;
  std::string out, device;
  int64_t seed = -1, threads = -1;
  bool resume = false;
  auto* distill = app.add_subcommand(
      "distill", "distill a student from a teacher; with no config: the default Fashion-MNIST recipe");
  distill->add_option("--config", configs, "JSON config file (repeatable; later files override earlier)")
      ->check(CLI::ExistingFile);
  distill->add_option("--set", sets, "override one key, e.g. --set student.epochs=5 (repeatable; wins over files)");
  distill->add_option("--out", out, "output folder (same as --set out=DIR)");
  distill->add_option("--device", device, "cpu, cuda, cuda:N or auto (same as --set train.device=...)");
  distill->add_option("--seed", seed, "random seed (same as --set train.seed=N)")->check(CLI::NonNegativeNumber);
  distill->add_option("--threads", threads, "intra-op threads, 0 = all cores (same as --set train.threads=N)")
      ->check(CLI::NonNegativeNumber);
  distill->add_flag("--resume", resume,
                    "continue from the newest checkpoint in OUT/checkpoints (same config; the teacher is reloaded)");
  auto* list = app.add_subcommand("list", "list the registered losses (with their option keys), models and data sets");
  distill->footer("Defaults (every key a config may set):\n" + kd::app::distill_defaults().dump(2));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*list) return run_list();
    if (*distill) {
      // Named flags are shorthands for --set and win over it, as the command line's last word.
      if (!out.empty()) sets.push_back("out=" + nlohmann::json(out).dump());
      if (!device.empty()) sets.push_back("train.device=" + nlohmann::json(device).dump());
      if (seed >= 0) sets.push_back("train.seed=" + std::to_string(seed));
      if (threads >= 0) sets.push_back("train.threads=" + std::to_string(threads));
      return run_distill(kd::app::resolve_config(configs, sets), resume);
    }
  } catch (const kd::Error& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const c10::Error& e) {
    spdlog::error("LibTorch: {}", e.what_without_backtrace());
    return 3;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
