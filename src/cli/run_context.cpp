#include "run_context.h"

#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kd/core/multi_teacher.h"
#include "kd/core/script_model.h"
#include "kd/io/archive_file.h"
#include "kd/io/atomic_file.h"
#include "kd/train/metric_names.h"
#include "kd/train/stop_signal.h"
#include "weighting_config.h"

namespace kd::app {

void ensure_output_folder(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out)) {
    throw Error(ErrorCategory::kFile,
                fmt::format("cannot create the output folder '{}': {}; choose another --out", out.string(),
                            ec ? ec.message() : "a file of that name is in the way"));
  }
  const fs::path probe = out / ".kd-write-probe";
  try {
    write_atomically(probe.string(), [](const std::string& tmp) {
      std::ofstream f(tmp);
      f << "probe\n";
      if (!f.flush()) throw std::runtime_error("write failed");
    });
  } catch (const Error& e) {
    throw Error(ErrorCategory::kFile, fmt::format("the output folder '{}' is not writable ({}); choose another --out or "
                                                  "fix its permissions or free space",
                                                  out.string(), e.message()));
  }
  fs::remove(probe, ec);
}

void require_free_space(const fs::path& folder, int64_t bytes, const std::string& what) {
  std::error_code ec;
  const auto space = fs::space(folder, ec);
  if (ec) return;  // unknown: the atomic writes still fail cleanly
  if (static_cast<int64_t>(space.available) < bytes) {
    throw Error(ErrorCategory::kFile,
                fmt::format("'{}' has {:.1f} MiB free, but {} needs about {:.1f} MiB; free some space, choose another "
                            "--out, or lower train.keep_last",
                            folder.string(), space.available / 1048576.0, what, bytes / 1048576.0));
  }
}

namespace {
std::shared_ptr<dist::ProcessGroup> g_process_group;
}

const std::shared_ptr<dist::ProcessGroup>& process_group() { return g_process_group; }
bool is_main_rank() { return !g_process_group || g_process_group->is_main(); }

torch::Device set_up_process(const RunConfig& config) {
  int64_t local_ranks = 1;
  if (dist::environment_has_ranks() && !g_process_group) {
    const auto o = dist::options_from_environment();
    if (o.world_size() > 1) {
      if (o.rank() != 0) {
        spdlog::set_level(spdlog::level::warn);
        spdlog::set_pattern(fmt::format("[%Y-%m-%d %H:%M:%S.%e] [rank {}] [%^%l%$] %v", o.rank()));
      }
      g_process_group = dist::ProcessGroup::create(o);
      const char* local = std::getenv("LOCAL_WORLD_SIZE");
      local_ranks = local && std::atoi(local) > 0 ? std::atoi(local) : o.world_size();
      spdlog::info("data-parallel: rank {} of {} (rendezvous {}:{})", o.rank(), o.world_size(), o.master_addr(),
                   o.master_port());
    }
  }
  // LibTorch's own default here is sometimes 1 thread; use every core (shared among local ranks) unless told otherwise.
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = config.train.threads;
  torch::set_num_threads(threads > 0 ? threads : static_cast<int>(std::max<int64_t>(1, cores / local_ranks)));
  torch::manual_seed(config.train.seed);
  auto device = resolve_device(config.train.device);
  if (g_process_group && device.is_cuda()) device = torch::Device(torch::kCUDA, g_process_group->options().local_rank());
  return device;
}

Splits load_splits(const RunConfig& config, const torch::Device& device) {
  return config.task->load_splits(config, device);
}

void save_module(const std::shared_ptr<torch::nn::Module>& module, const fs::path& path) {
  torch::serialize::OutputArchive archive;
  module->save(archive);
  save_archive_atomically(archive, path.string());
}

void save_text(const fs::path& path, const std::string& text) {
  write_atomically(path.string(), [&](const std::string& tmp) {
    std::ofstream out(tmp);
    out << text;
    if (!out.flush()) throw std::runtime_error("write failed");
  });
}

void load_module(torch::nn::Module& module, const fs::path& path, const torch::Device& device, const std::string& what) {
  if (!fs::exists(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("{} '{}' does not exist", what, path.string()));
  }
  if (auto damage = find_archive_damage(path.string())) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}' is damaged: {} (copy it again, or write it again)", what, path.string(), *damage));
  }
  const char* section = what == "teacher" ? "teacher" : "student";  // the config section that shapes it
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string(), device);
    if (auto why = find_unloadable_entry(module, archive)) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("{} '{}' cannot be loaded into {}: {} (it was written by another architecture; the config's "
                              "\"{}\" section must match the run that wrote it)",
                              what, path.string(), module.name(), *why, section));
    }
    module.load(archive);
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("{} '{}' cannot be loaded into {}: {} (was it saved from another architecture? the "
                            "config's \"{}\" section must match the run that wrote it)",
                            what, path.string(), module.name(), e.what_without_backtrace(), section));
  } catch (const std::exception& e) {  // e.g. torch::jit::ErrorReport from a damaged archive
    std::string message = e.what();
    throw Error(ErrorCategory::kFormat, fmt::format("{} '{}' cannot be read: {} (is it truncated or damaged?)", what,
                                                    path.string(), message.substr(0, message.find('\n'))));
  }
}

bool is_int8_file(const fs::path& path) {
  const std::string file = path.filename().string();
  return file.size() > 8 && file.compare(file.size() - 8, 8, ".int8.pt") == 0;
}

LoadedModel load_model_file(const RunConfig& config, const std::string& which, const fs::path& path,
                            const torch::Device& device) {
  const Task& task = *config.task;
  const bool int8 = is_int8_file(path);
  LoadedModel m;
  m.model = which == "teacher" ? task.make_teacher(config, &m.name) : task.make_student(config, int8, &m.name);
  m.model->to(device);
  if (which == "teacher" && !task.trains_teacher()) {
    if (path != fs::path(config.out) / "teacher.pt") {
      throw Error(ErrorCategory::kConfig, fmt::format("task \"{}\" reads its teacher from teacher.torchscript; --model "
                                                      "applies to the student only",
                                                      task.name()));
    }
    return m;  // the task's teacher is its file, already loaded
  }
  if (int8) {
    m.int8_report = qat::load_int8(*m.model, path.string()).to_string();
    m.name += " (int8 file)";
  } else {
    load_module(*m.model, path, device, which);
  }
  return m;
}

std::vector<std::string> stage_fingerprints(const RunConfig& config) {
  std::vector<std::string> fingerprints;
  for (const auto& stage : config.stages) fingerprints.push_back(stage.fingerprint);
  return fingerprints;
}

StagedTrainerOptions trainer_options(const RunConfig& config) {
  const TrainConfig& t = config.train;
  return StagedTrainerOptions(t.trainer)
      .process_group(g_process_group)
      .batch_size(t.batch_size)
      .weight_decay(t.weight_decay)
      .seed(t.seed)
      .precision(t.precision)
      .num_classes(config.task->num_classes())
      .eval_task(config.task->eval_task());
}

json model_row(const std::string& name, const torch::nn::Module& m, const Scores& test) {
  json row = {{"model", name}, {"parameters", parameter_count(m)}, {"parameter_bytes", parameter_bytes(m)}};
  for (const auto& [k, v] : test.values) row["test_" + k] = v;
  return row;
}

std::string first_checkpoint(const fs::path& dir) {
  if (!fs::is_directory(dir)) return "";
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind("ckpt-", 0) == 0) return name;
  }
  return "";
}

void refuse_stale_checkpoints(const fs::path& dir, bool resume) {
  if (resume) return;
  const std::string name = first_checkpoint(dir);
  if (!name.empty()) {
    throw Error(ErrorCategory::kState,
                fmt::format("'{}' holds checkpoints of an earlier run (e.g. {}); continue that run with --resume, or "
                            "start this one in another --out folder (or delete the old checkpoints first)",
                            dir.string(), name));
  }
}

TrainSummary fit_stoppable(StagedTrainer& trainer, const data::TensorDataset& train,
                           const data::TensorDataset& validation, bool resume, const std::string& what_is_lost) {
  TrainSummary fit;
  {
    StopSignal::Scope stop_on_signal;  // Ctrl-C / SIGTERM: finish the step, checkpoint, return
    fit = trainer.fit(train, &validation, resume);
  }
  // A request during the last step of the last stage ends a complete run: still a stop, not a success.
  const int signal = fit.stopped_by_signal ? fit.stopped_by_signal : StopSignal::requested();
  if (signal) {
    throw Stopped(signal, fmt::format("stopped by signal {} after step {}; {}; the checkpoints hold the training so "
                                      "far: run the same command with --resume to continue",
                                      signal, fit.steps, what_is_lost));
  }
  return fit;
}

std::shared_ptr<Callback> save_text_on_fit_begin(const fs::path& path, const std::string& text) {
  struct SaveOnFitBegin : Callback {
    fs::path path;
    std::string text;
    void on_fit_begin(const FitInfo&) override { save_text(path, text); }
  };
  auto cb = std::make_shared<SaveOnFitBegin>();
  cb->path = path;
  cb->text = text;
  return cb;
}

TeacherModel train_or_load_teacher(const RunConfig& config, const torch::Device& device, const Splits& data,
                                   double& seconds, bool resume) {
  const fs::path out(config.out);
  const TeacherConfig& tc = config.teacher;
  TeacherModel t;
  t.model = config.task->make_teacher(config, &t.name);
  auto& teacher = t.model;
  teacher->to(device);
  if (!config.task->trains_teacher()) {  // the user's file, used as it is
    spdlog::info("teacher: {} ({} parameters)", t.name, parameter_count(*teacher));
    seconds = 0;
    return t;
  }
  const fs::path path = tc.path.empty() ? out / "teacher.pt" : fs::path(tc.path);
  const auto t0 = std::chrono::steady_clock::now();
  if (!tc.path.empty() && !fs::exists(path)) {
    throw Error(ErrorCategory::kFile,
                fmt::format("teacher.path '{}' does not exist; train one with `kd-train teacher --out DIR` (it writes "
                            "DIR/teacher.pt), or leave teacher.path empty to train the teacher into {}",
                            path.string(), out.string()));
  }
  if (fs::exists(path)) {
    load_module(*teacher, path, device, "teacher");
    spdlog::info("teacher: loaded {} ({}){}", path.string(), t.name,
                 tc.path.empty() ? " (delete it to train a new one)" : "");
  } else {
    // Checkpoints (weights, two AdamW moments, EMA) for keep_last + 1 files at once, and the teacher file.
    require_free_space(out, (4 * (config.train.trainer.keep_last() + 1) + 1) * parameter_bytes(*teacher) + (1 << 20),
                       "training the teacher (its checkpoints and teacher.pt)");
    const fs::path ckpt_dir = out / "teacher_checkpoints";
    refuse_stale_checkpoints(ckpt_dir, resume);
    spdlog::info("teacher: training {} ({} parameters) from scratch for {}", t.name, parameter_count(*teacher),
                 tc.steps > 0 ? fmt::format("{} steps", tc.steps) : fmt::format("{} epoch(s)", tc.epochs));
    // What decides the teacher: the task, its data, the teacher section and the train section, not the
    // student's stages.
    const json& doc = config.document;
    const json teacher_part = {{"task", doc["task"]}, {"data", doc["data"]}, {"teacher", doc["teacher"]}, {"train", doc["train"]}};
    StagedTrainer trainer(Student(teacher), std::nullopt,
                          {Stage("teacher", torch::nn::AnyModule(HardLabelCE()))
                               .epochs(tc.epochs)
                               .steps(tc.steps)
                               .lr(config.train.lr)},
                          // Hard-example mining weighs examples by a teacher: the teacher's own training has none.
                          trainer_options(config)
                              .hard_example_mix(0.0)
                              .checkpoint_dir(ckpt_dir.string())
                              .checkpoint_every(config.train.checkpoint_every)
                              .fingerprint(config_fingerprint(teacher_part)));
    if (is_main_rank()) {
      trainer.add_callback(std::make_shared<ConsoleLogger>(config.train.log_every));
      if (const auto tb = tensorboard_dir(config, "teacher"); !tb.empty()) {
        trainer.add_callback(std::make_shared<TensorBoardLogger>(tb));
      }
      // Nothing to resume from: the lines a killed start-up left are not this run's.
      if (!resume || first_checkpoint(ckpt_dir).empty()) fs::remove(out / "teacher_metrics.jsonl");
      trainer.add_callback(std::make_shared<MetricsLog>((out / "teacher_metrics.jsonl").string()));
      trainer.add_callback(save_text_on_fit_begin(out / "teacher_config.json", doc.dump(2) + "\n"));
    }
    // Cross-entropy needs logits only: a CNN skips its spatial attention maps while it trains.
    auto* cnn = dynamic_cast<models::CnnTeacherImpl*>(teacher.get());
    if (cnn) cnn->options.attention_maps(false);
    fit_stoppable(trainer, data.train, data.validation, resume, fmt::format("{} was not written", path.string()));
    if (cnn) cnn->options.attention_maps(true);
    if (is_main_rank()) {
      save_module(teacher, path);
      fs::remove_all(ckpt_dir);  // teacher.pt is the finished product; its checkpoints would only block a new run
    }
    // The other ranks go on only once teacher.pt is complete and the checkpoints are gone.
    if (g_process_group) g_process_group->barrier();
  }
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

bool self_distillation(const RunConfig& config) {
  const TeacherConfig& t = config.teacher;
  if (!t.self_distillation) return false;
  auto refuse = [](const std::string& why) {
    throw Error(ErrorCategory::kConfig,
                "config: 'teacher.self_distillation' is true (the student's moving average is its teacher), " + why);
  };
  if (!(config.train.trainer.ema_decay() > 0)) {
    refuse("which needs the average: set 'train.ema_decay', e.g. 0.999");
  }
  if (!t.path.empty()) refuse("but 'teacher.path' names a teacher file: remove one of the two");
  if (!t.ensemble.empty()) {
    refuse("but 'teacher.ensemble' names teacher files: remove one of the two");
  }
  if (t.cache.enabled) {
    refuse("but 'teacher.cache.enabled' is true: a cache holds a fixed teacher's outputs, and this one changes every "
           "step; set it false");
  }
  if (config.train.trainer.hard_example_mix() > 0) {
    refuse("but 'train.hard_example_mix' ranks examples by a fixed teacher: set it 0");
  }
  for (const char* hook : {"lora", "qat", "prune"}) {
    if (config.uses_hook(hook)) {
      refuse(fmt::format("but a stage lists the \"{}\" hook, which rewrites the weights the average follows: drop one "
                         "of the two",
                         hook));
    }
  }
  return true;
}

std::vector<std::string> validation_scores(const Task& task) {
  return task.num_classes() > 0 ? metric::classification_scores() : metric::language_model_scores();
}

bool higher_is_better(const std::string& score) { return metric::info(score).higher_is_better; }

std::pair<std::string, bool> best_metric(const RunConfig& config) {
  const Task& task = *config.task;
  const auto names = validation_scores(task);
  std::string m = config.evaluation.best_metric;
  if (m.empty()) m = names.front();
  if (std::find(names.begin(), names.end(), m) == names.end()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("'evaluation.best_metric' = \"{}\" is not a validation score of task '{}'; it reports: {}", m,
                            task.name(), fmt::join(names, ", ")));
  }
  return {m, higher_is_better(m)};
}

std::shared_ptr<Model> make_student_model(const RunConfig& config, bool activation_quant, std::string* name) {
  return config.task->make_student(config, activation_quant, name);
}

bool stages_read_teacher(const std::vector<StageSpec>& specs) {
  for (const auto& s : specs) {
    for (const auto& l : s.losses()) {
      if (LossRegistry::global().needs(l.type()).teacher()) return true;
    }
  }
  return false;
}

StudentSetup build_student(const RunConfig& config, const fs::path& out) {
  StudentSetup setup;
  setup.model = make_student_model(config, config.uses_hook("qat"), &setup.name);
  setup.specs = config.specs();
  const HookConfigs& h = config.hooks;
  // One hook object per kind, made when a stage first lists it.
  auto hook_for = [&](const std::string& name) -> std::shared_ptr<StageHook> {
    try {
      if (name == "lora") {
        if (!setup.lora_hook) {
          auto lora = lora::apply(setup.model, h.lora);
          setup.lora_hook = std::make_shared<lora::Hook>(
              lora, lora::HookOptions(h.lora_hook)
                        .save_adapter_to(is_main_rank() ? (out / "lora_adapter.pt").string() : std::string()));
        }
        return setup.lora_hook;
      }
      if (name == "prune") {
        if (!setup.prune_hook) {
          setup.prune_hook = std::make_shared<prune::Hook>(prune::prepare(setup.model, h.prune), h.prune_hook);
        }
        return setup.prune_hook;
      }
      if (!setup.qat_hook) {
        setup.qat_hook = std::make_shared<qat::Hook>(qat::prepare(setup.model, h.qat), h.qat_hook);
      }
      return setup.qat_hook;
    } catch (const Error& e) {
      throw Error(e.category(), fmt::format("config: '{}' on {}: {}", name, setup.name, e.message()));
    }
  };
  for (size_t i = 0; i < config.stages.size(); ++i) {
    const StageConfig& stage = config.stages[i];
    std::vector<std::shared_ptr<StageHook>> hooks;
    for (const auto& name : stage.hooks) hooks.push_back(hook_for(name));
    setup.specs[i].hooks(hooks);
    const std::string path = fmt::format("stages[{}]", i);
    const WeightingConfig& weighting = stage.weighting;
    if (weighting.policy == WeightingPolicyKind::kFixed) continue;
    if (g_process_group && g_process_group->world_size() > 1 && weighting.policy != WeightingPolicyKind::kUncertainty) {
      // Each rank would weigh by its own shard (its gradients, its batch, rank 0's evaluations alone), so the
      // ranks would no longer follow the one-process trajectory; the learned log-variances are all-reduced.
      throw Error(ErrorCategory::kConfig,
                  fmt::format("config: '{}.weighting.policy' {} is not available in data-parallel runs ({} ranks): "
                              "use \"uncertainty\" or one process",
                              path, json(weighting_policy_name(weighting.policy)).dump(), g_process_group->world_size()));
    }
    const std::string metric = weighting.metric.empty() ? best_metric(config).first : weighting.metric;
    if (const auto scores = validation_scores(*config.task); std::find(scores.begin(), scores.end(), metric) == scores.end()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("config: '{}.weighting.metric' = \"{}\" is not a validation score of task '{}'; it reports: {}",
                              path, metric, config.task->name(), fmt::join(scores, ", ")));
    }
    auto made = make_weighting(weighting, static_cast<int64_t>(stage.spec.losses().size()), stage.spec.name(), *setup.model,
                               metric, higher_is_better(metric));
    setup.specs[i].weighting(made.policy);
    if (made.feedback) setup.reward_feedback.push_back(made.feedback);
  }
  return setup;
}

std::string tensorboard_dir(const RunConfig& config, const std::string& run) {
  const std::string& given = config.train.tensorboard;
  if (given == "none") return "";
  const fs::path root = given.empty() ? fs::path(config.out) / "tensorboard" : fs::path(given);
  return (root / run).string();
}

std::shared_ptr<Model> ensemble_teacher(const RunConfig& config, std::shared_ptr<Model> first, std::string* name,
                                        const torch::Device& device) {
  const TeacherConfig& t = config.teacher;
  const std::vector<std::string>& files = t.ensemble;
  if (files.empty()) return first;
  const Task& task = *config.task;
  std::vector<ModelPtr> teachers{first};
  std::vector<std::string> names{name ? *name : std::string()};
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string key = fmt::format("teacher.ensemble[{}]", i);
    const std::string& file = files[i];
    if (!fs::exists(file)) {
      throw Error(ErrorCategory::kFile, fmt::format("{} '{}' does not exist; train one with `kd-train teacher --out DIR` "
                                                    "(DIR/teacher.pt){}",
                                                    key, file, task.trains_teacher() ? "" : " or give a TorchScript file"));
    }
    std::shared_ptr<Model> m;
    if (!task.trains_teacher()) {
      try {
        m = ScriptModel::load(file);  // the custom task's teachers are TorchScript files, whatever their architecture
      } catch (const Error& e) {
        throw Error(e.category(), fmt::format("{}: {}", key, e.message()));
      }
    } else {
      m = task.make_teacher(config);
      m->to(device);
      load_module(*m, file, device, key);
    }
    m->to(device);
    teachers.push_back(m);
    names.push_back(fs::path(file).filename().string());
  }
  const std::vector<double>& weights = t.ensemble_weights;
  if (!weights.empty() && weights.size() != teachers.size()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("config: 'teacher.ensemble_weights' has {} values for {} teachers (the teacher and the {} of "
                            "teacher.ensemble); give one per teacher, or none for equal weights",
                            weights.size(), teachers.size(), files.size()));
  }
  // The soft targets are mixed at the KL's temperature unless told otherwise: then softmax(z / T) is the mixture.
  // A term without "temperature" has its loss's default.
  const std::map<std::string, double> default_temperature = {{"temperature_kl", TemperatureKLOptions().temperature()},
                                                              {"dkd", DKDOptions().temperature()},
                                                              {"teacher_mixture_kl", TeacherMixtureKLOptions().temperature()}};
  double temperature = t.ensemble_temperature;
  for (const auto& stage : config.stages) {
    for (const auto& loss : stage.spec.losses()) {
      const auto it = default_temperature.find(loss.type());
      if (temperature <= 0 && it != default_temperature.end()) temperature = loss.number("temperature", it->second);
    }
  }
  if (temperature <= 0) temperature = 1.0;
  std::shared_ptr<Model> ensemble;
  try {
    ensemble = std::make_shared<MultiTeacherImpl>(teachers, MultiTeacherOptions().weights(weights).temperature(temperature));
  } catch (const Error& e) {
    throw Error(ErrorCategory::kConfig, fmt::format("config: 'teacher.ensemble': {}", e.message()));
  }
  if (name) *name = fmt::format("ensemble of {} (T {}): {}", teachers.size(), temperature, fmt::join(names, " + "));
  return ensemble;
}

}  // namespace kd::app
