// kd-train: the command-line front end of kdistill.
//
//   kd-train distill [--config FILE]... [--set key.path=value]... [--out DIR] [--device D] [--seed N] [--threads N]
//
// With no arguments `distill` runs the default recipe on Fashion-MNIST: train a
// CNN teacher from scratch (no pretrained weights can be downloaded), then
// distill a depthwise-separable student with 0.9·KL(T=4) + 0.1·CE.
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

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/models/cnn.h"
#include "kd/train/console_logger.h"
#include "kd/train/metrics.h"
#include "kd/train/metrics_log.h"
#include "kd/train/staged_trainer.h"
#include "config.h"

namespace fs = std::filesystem;

namespace {

// The resolved configuration, as typed values (see config.cpp for the schema and defaults).
struct DistillArgs {
  explicit DistillArgs(const nlohmann::json& c)
      : out(c["out"]), data_root(c["data"]["root"]), device(c["train"]["device"]),
        teacher_epochs(c["teacher"]["epochs"]), epochs(c["student"]["epochs"]),
        batch_size(c["train"]["batch_size"]), limit(c["data"]["limit"]),
        validation_size(c["data"]["validation_size"]), split_seed(c["data"]["split_seed"]),
        threads(c["train"]["threads"]), log_every(c["train"]["log_every"]), seed(c["train"]["seed"]),
        lr(c["train"]["lr"]), weight_decay(c["train"]["weight_decay"]),
        temperature(c["loss"]["temperature"]), kl_weight(c["loss"]["kl_weight"]) {}
  std::string out, data_root, device;
  int64_t teacher_epochs, epochs, batch_size, limit, validation_size;
  uint64_t split_seed;
  int threads;
  int64_t log_every;
  uint64_t seed;
  double lr, weight_decay, temperature, kl_weight;
};

/// 0.9·KL + 0.1·CE on the student's logits: the default recipe's loss.
struct SoftAndHardImpl : torch::nn::Module {
  SoftAndHardImpl(double temperature, double kl_weight)
      : kl(kd::TemperatureKLOptions().temperature(temperature)), kl_weight(kl_weight) {
    register_module("kl", kl);
    register_module("ce", ce);
  }
  kd::LossResult forward(const kd::DistillBatch& batch) {
    auto k = kl->forward(batch), c = ce->forward(batch);
    kd::LossResult r;
    r.total = kl_weight * k.total + (1 - kl_weight) * c.total;
    r.parts = {{"kl", k.total.detach()}, {"ce", c.total.detach()}};
    return r;
  }
  kd::TemperatureKL kl;
  kd::HardLabelCE ce;
  double kl_weight;
};
TORCH_MODULE(SoftAndHard);

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

// Trains `student` for `epochs` on one loss and reports test accuracy.
double train_stage(kd::Student student, std::optional<kd::Teacher> teacher, const std::string& name,
                   torch::nn::AnyModule loss, int64_t epochs, const DistillArgs& a,
                   const kd::data::TensorDataset& train, const kd::data::TensorDataset& val) {
  kd::StagedTrainer trainer(std::move(student), std::move(teacher),
                            {kd::Stage(name, std::move(loss)).epochs(epochs).lr(a.lr)},
                            kd::StagedTrainerOptions()
                                .batch_size(a.batch_size)
                                .weight_decay(a.weight_decay)
                                .clip_norm(0)
                                .seed(a.seed)
                                .num_classes(10));
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(a.log_every));
  trainer.add_callback(std::make_shared<kd::MetricsLog>((fs::path(a.out) / "metrics.jsonl").string()));
  const auto summary = trainer.fit(train, &val);
  return summary.evaluations.empty() ? 0.0 : summary.evaluations.back().metrics.at("accuracy");
}

int run_distill(const nlohmann::json& config) {
  const DistillArgs a(config);
  // LibTorch's own default here is sometimes 1 thread; use every core unless told otherwise.
  torch::set_num_threads(a.threads > 0 ? a.threads : std::max(1u, std::thread::hardware_concurrency()));
  torch::manual_seed(a.seed);
  const torch::Device device = kd::resolve_device(a.device);
  fs::create_directories(a.out);
  save_text(fs::path(a.out) / "config.json", config.dump(2) + "\n");

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
  const fs::path teacher_path = fs::path(a.out) / "teacher.pt";
  if (fs::exists(teacher_path)) {
    torch::serialize::InputArchive archive;
    archive.load_from(teacher_path.string(), device);
    teacher_model->load(archive);
    spdlog::info("teacher: loaded {}", teacher_path.string());
  } else {
    spdlog::info("teacher: training CnnTeacher ({} parameters) from scratch for {} epoch(s)",
                 kd::parameter_count(*teacher_model), a.teacher_epochs);
    train_stage(kd::Student(teacher_model.ptr()), std::nullopt, "teacher", torch::nn::AnyModule(kd::HardLabelCE()),
                a.teacher_epochs, a, train, val);
    save_module(teacher_model.ptr(), teacher_path);
  }
  kd::Teacher teacher(teacher_model.ptr());
  const double teacher_acc = kd::evaluate_classifier(*teacher_model, test, 10).accuracy();

  auto student_model = kd::models::DepthwiseCnnStudent(kd::models::DepthwiseCnnStudentOptions());
  student_model->to(device);
  spdlog::info("student: distilling DepthwiseCnnStudent ({} parameters) for {} epoch(s) with "
               "{:g}·KL(T={:g}) + {:g}·CE",
               kd::parameter_count(*student_model), a.epochs, a.kl_weight, a.temperature, 1 - a.kl_weight);
  train_stage(kd::Student(student_model.ptr()), teacher, "distill",
              torch::nn::AnyModule(SoftAndHard(a.temperature, a.kl_weight)), a.epochs, a, train, val);
  save_module(student_model.ptr(), fs::path(a.out) / "student.pt");
  const double student_acc = kd::evaluate_classifier(*student_model, test, 10).accuracy();

  const auto tp = kd::parameter_count(*teacher_model), sp = kd::parameter_count(*student_model);
  nlohmann::json result = {{"teacher_params", tp},           {"student_params", sp},
                           {"teacher_test_accuracy", teacher_acc}, {"student_test_accuracy", student_acc},
                           {"retained", student_acc / teacher_acc}, {"epochs", a.epochs},
                           {"teacher_epochs", a.teacher_epochs},    {"seed", a.seed}};
  save_text(fs::path(a.out) / "result.json", result.dump(2) + "\n");
  fmt::print("\nResult (Fashion-MNIST test set, {} images)\n", test.size());
  fmt::print("  teacher  CnnTeacher           {:>8} params  accuracy {:6.2f}%\n", tp, 100 * teacher_acc);
  fmt::print("  student  DepthwiseCnnStudent  {:>8} params  accuracy {:6.2f}%  ({:.1f}% of the teacher's "
             "parameters, {:.1f}% of its accuracy)\n",
             sp, 100 * student_acc, 100.0 * sp / tp, 100 * student_acc / teacher_acc);
  fmt::print("  written: {}/{{teacher.pt, student.pt, result.json, config.json, metrics.jsonl}}\n", a.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kd-train: knowledge distillation with kdistill"};
  app.require_subcommand(1);
  std::vector<std::string> configs, sets;
  std::string out, device;
  int64_t seed = -1, threads = -1;
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
  distill->footer("Defaults (every key a config may set):\n" + kd::app::distill_defaults().dump(2));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*distill) {
      // Named flags are shorthands for --set and win over it, as the command line's last word.
      if (!out.empty()) sets.push_back("out=" + nlohmann::json(out).dump());
      if (!device.empty()) sets.push_back("train.device=" + nlohmann::json(device).dump());
      if (seed >= 0) sets.push_back("train.seed=" + std::to_string(seed));
      if (threads >= 0) sets.push_back("train.threads=" + std::to_string(threads));
      return run_distill(kd::app::resolve_config(configs, sets));
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
