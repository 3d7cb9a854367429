// kd-train distill: the teacher (trained or loaded), then the config's stages on the student.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kd/core/script_model.h"
#include "kd/io/atomic_file.h"
#include "kd/train/metric_names.h"
#include "build_info.h"
#include "commands.h"
#include "custom_task.h"
#include "run_context.h"
#include "run_lock.h"
#include "stage_config.h"

namespace kd::app {
namespace {

// Wall time per stage, for the summary.
// Each stage's steps, wall seconds and last validation scores, kept in OUT/stages.json across any number of
// resumes so that summary.json describes the whole run: rewritten at every stage end and when a stop ends
// fit() (with the stage in progress), read back by a resumed run. Seconds a SIGKILL cut short are not counted.
struct StageRecord : kd::Callback {
  StageRecord(fs::path file, bool resume) : file(std::move(file)) {
    if (resume && !this->file.empty() && fs::exists(this->file)) {
      try {
        std::ifstream in(this->file);
        const json j = json::parse(in);
        rows = j.at("stages");
        if (j.contains("current")) current = j["current"];
      } catch (const std::exception& e) {
        spdlog::warn("{}: unreadable ({}); the summary will hold only the stages trained from now on",
                     this->file.string(), e.what());
      }
    }
  }
  void on_stage_begin(const kd::Stage& s, const kd::StepInfo& i) override {
    start = std::chrono::steady_clock::now();
    // A stage resumed mid-way began stage_step steps before this one; its earlier seconds come from the record.
    const bool same = current.is_object() && current.value("stage", "") == s.name();
    now = {{"stage", s.name()}, {"first_step", i.global_step - i.stage_step},
           {"seconds_before", same ? current.value("seconds", 0.0) : 0.0}, {"validation", json::object()}};
    if (same && current.contains("validation")) now["validation"] = current["validation"];
    current = json();
  }
  void on_eval(const kd::EvalResult& e) override {
    json v = json::object();
    for (const auto& [k, x] : e.metrics) {
      if (k.rfind("f1.", 0) != 0) v["validation_" + k] = x;  // per-class F1 stays in metrics.jsonl
    }
    now["validation"] = v;
  }
  void on_stage_end(const kd::Stage& s, const kd::StepInfo& i) override {
    json row = {{"stage", s.name()}, {"steps", i.global_step - now.value("first_step", int64_t{0})},
                {"seconds", now.value("seconds_before", 0.0) + elapsed()}};
    row.update(now["validation"]);
    rows.push_back(row);
    now = json();
    save();
  }
  void on_fit_end(const kd::TrainSummary&) override {
    if (now.is_object()) {  // stopped within a stage: what it has done so far
      current = {{"stage", now["stage"]}, {"seconds", now.value("seconds_before", 0.0) + elapsed()},
                 {"validation", now["validation"]}};
      now = json();
    }
    save();
  }
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  void save() const {
    if (file.empty()) return;
    json j = {{"stages", rows}};
    if (current.is_object()) j["current"] = current;
    save_text(file, j.dump(1) + "\n");
  }
  fs::path file;  // empty: not written (ranks other than 0)
  json rows = json::array();
  json current;  // the stage a stop interrupted, from the record
  json now;      // the stage in progress
  std::chrono::steady_clock::time_point start;
};

// The student with the best validation score so far as OUT/student.best.pt, what and when in student.best.json
// (read back on --resume, so the best is the whole run's). Evaluations in stages whose hooks change the model's
// structure (LoRA, QAT) are not candidates, and none are with train.eval_on_ema (those scores are the EMA's).
struct BestStudent : kd::Callback {
  BestStudent(fs::path out, std::shared_ptr<torch::nn::Module> student, std::string metric, bool higher,
              std::set<std::string> skipped_stages, bool resume)
      : out(std::move(out)), student(std::move(student)), metric(std::move(metric)), higher(higher),
        skipped(std::move(skipped_stages)) {
    const fs::path record = this->out / "student.best.json";
    if (resume && fs::exists(record) && fs::exists(this->out / "student.best.pt")) {
      std::ifstream in(record);
      best = json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!best.is_object() || best.value("metric", "") != this->metric) best = json();
    } else {
      fs::remove(this->out / "student.best.pt");
      fs::remove(record);
    }
  }
  void on_eval(const kd::EvalResult& e) override {
    const auto it = e.metrics.find(metric);
    if (it == e.metrics.end() || skipped.count(e.stage) || !std::isfinite(it->second)) return;
    if (best.is_object() && !(higher ? it->second > best["value"].get<double>() : it->second < best["value"].get<double>())) {
      return;
    }
    save_module(student, out / "student.best.pt");
    best = {{"metric", metric}, {"value", it->second}, {"global_step", e.global_step}, {"stage", e.stage},
            {"file", (out / "student.best.pt").string()}};
    save_text(out / "student.best.json", best.dump(1) + "\n");
  }
  fs::path out;
  std::shared_ptr<torch::nn::Module> student;
  std::string metric;
  bool higher;
  std::set<std::string> skipped;
  json best;  // null until an evaluation counted
};

// Test scores of the student at the end of the stage before the first QAT stage: the float
// model the int8 file is compared with.
struct FloatBeforeQat : kd::Callback {
  FloatBeforeQat(std::string stage, const Task& task, kd::Model& student, const kd::data::TensorDataset& test)
      : stage(std::move(stage)), task(task), student(student), test(test) {}
  void on_stage_end(const kd::Stage& s, const kd::StepInfo&) override {
    if (s.name() != stage) return;
    scores = task.evaluate(student, test);
    measured = true;
    spdlog::info("float student before QAT: test {}", scores.to_string());
  }
  std::string stage;
  const Task& task;
  kd::Model& student;
  const kd::data::TensorDataset& test;
  Scores scores;
  bool measured = false;
};

// byte_lm: `generate.tokens` bytes after `generate.prompt` from `model` (temperature + top-k, seeded),
// printable: bytes outside ASCII text shown as '.'.
std::string sample_text(kd::Model& model, const GenerateConfig& g) {
  auto* lm = dynamic_cast<models::CausalLMImpl*>(&model);
  if (!lm || g.tokens == 0) return "";
  const std::string prompt = g.prompt.empty() ? "\n" : g.prompt;
  return models::printable_bytes(lm->generate(models::byte_tokens(prompt).to(lm->embed->weight.device()), g.tokens,
                                              models::GenerateOptions().temperature(g.temperature).top_k(g.top_k).seed(g.seed)));
}

// The teacher outputs the stages read: logits, and the layers their feature / attention terms name.
data::TeacherCacheOptions cache_options(const TeacherCacheConfig& c, const std::vector<StageSpec>& specs) {
  std::set<int64_t> hidden, attention;
  for (const auto& s : specs) {
    for (const auto& l : s.losses()) {
      const auto& needs = LossRegistry::global().needs(l.type());
      for (double v : l.numbers("teacher_layers", {})) {
        if (needs.teacher_hidden_states()) hidden.insert(int64_t(v));
        if (needs.teacher_attentions()) attention.insert(int64_t(v));
      }
    }
  }
  return data::TeacherCacheOptions()
      .top_k(c.top_k)
      .dtype(c.dtype)
      .hidden_states({hidden.begin(), hidden.end()})
      .attentions({attention.begin(), attention.end()});
}

json without_stages(json document) {
  document.erase("stages");
  return document;
}

// A summary row with, for classifiers, the calibration and (evaluation.fgsm_epsilon > 0) the accuracy under an
// FGSM attack made against the model itself, clamped to the task's input range.
json scored_row(const std::string& name, kd::Model& model, const Scores& scores, const data::TensorDataset& test,
                const RunConfig& config) {
  const Task& task = *config.task;
  json row = model_row(name, model, scores);
  if (scores.ece) row["test_ece"] = *scores.ece;
  if (task.num_classes() == 0) return row;
  const double eps = config.evaluation.fgsm_epsilon;
  if (eps > 0) {
    auto attack = AdversarialOptions().epsilon(eps);
    if (const auto range = task.input_range()) attack.input_min(range->first).input_max(range->second);
    row["test_fgsm_accuracy"] = kd::evaluate_under_fgsm(model, test, task.num_classes(), attack).accuracy();
    row["fgsm_epsilon"] = eps;
  }
  return row;
}

// Every stage once on the first two training examples, with an untrained teacher and student of the configured
// shapes (StagedTrainer::check): a layer index or width that does not fit stage 3 stops the run here, before
// the teacher or any stage trains. Changes no random draw and writes nothing.
void check_stages_before_training(const RunConfig& config, const fs::path& out, const Splits& data,
                                  const data::TensorDataset& train, const torch::Device& device) {
  const auto specs = config.specs();
  const GeneratorsKept kept;  // building untrained models draws random numbers the run must not lose
  const bool self_distill = self_distillation(config);
  std::shared_ptr<Model> teacher_model;
  if (!self_distill) {
    teacher_model = config.task->make_teacher(config);
    teacher_model->to(device);
    teacher_model = ensemble_teacher(config, teacher_model, nullptr, device);
  }
  auto student = build_student(config, out);
  student.model->to(device);
  auto options = trainer_options(config);
  options.teacher_cache(nullptr).process_group(nullptr).self_distillation(self_distill && stages_read_teacher(specs));
  kd::StagedTrainer trainer(kd::Student(student.model),
                            stages_read_teacher(specs) && teacher_model
                                ? std::optional<kd::Teacher>(kd::Teacher(teacher_model))
                                : std::nullopt,
                            kd::build_stages(student.specs), options);
  trainer.check(train, &data.validation);
}

// The cache keeps one mixture of an ensemble's logits; a term reading each teacher's own cannot use it.
void refuse_cached_mixture(const RunConfig& config) {
  if (!config.teacher.cache.enabled) return;
  for (const auto& stage : config.stages) {
    const StageSpec& s = stage.spec;
    for (const auto& l : s.losses()) {
      if (LossRegistry::global().needs(l.type()).each_teacher()) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("config: stage '{}' uses {}, which reads each teacher's logits; the "
                                "teacher cache keeps only the mixture: set teacher.cache.enabled=false",
                                s.name(), l.type()));
      }
    }
  }
}

// The run's teacher: trained or loaded (an ensemble when the config names one), or for self-distillation a
// student-shaped model that the final EMA is copied into after training, which the summary scores.
struct RunTeacher {
  std::shared_ptr<Model> model;
  std::string name;
  double seconds = 0;  // training the teacher; 0 when loaded
};

RunTeacher prepare_teacher(const RunConfig& config, const Splits& data, const torch::Device& device, bool resume,
                           bool self_distill) {
  RunTeacher t;
  if (self_distill) {
    const GeneratorsKept kept;
    t.model = make_student_model(config, false);
    t.model->to(device);
    t.name = "student EMA (self-distillation teacher)";
    spdlog::info("teacher: the student's own EMA (decay {}), self-distillation", config.train.trainer.ema_decay());
    return t;
  }
  const auto trained = train_or_load_teacher(config, device, data, t.seconds, resume);
  t.name = trained.name;
  t.model = ensemble_teacher(config, trained.model, &t.name, device);
  if (t.model != trained.model) spdlog::info("teacher: {}", t.name);
  return t;
}

// One line naming the student and each stage's steps and weighted terms.
void log_plan(const std::vector<StageSpec>& specs, const StudentSetup& student, bool teacher_in_training) {
  std::vector<std::string> plan;
  for (const auto& s : specs) {
    std::vector<std::string> terms;
    for (const auto& l : s.losses()) terms.push_back(fmt::format("{}·{}", l.weight().describe(), l.term_name()));
    plan.push_back(fmt::format("{} ({}: {})", s.name(),
                               s.steps() > 0 ? fmt::format("{} steps", s.steps()) : fmt::format("{} ep", s.epochs()),
                               fmt::join(terms, " + ")));
  }
  spdlog::info("student: {} {} ({} parameters) in {} stage(s): {}",
               teacher_in_training ? "distilling" : "training (alone, no teacher term)", student.name,
               kd::parameter_count(*student.model), specs.size(), fmt::join(plan, " -> "));
}

// byte_lm with a "generate" section: the teacher's and the untrained student's samples, printed and kept for
// the summary (null otherwise; a self-distillation teacher exists only once trained).
json samples_before_training(const RunConfig& config, bool self_distill, kd::Model& teacher, kd::Model& student) {
  json samples;
  if (!config.generate || self_distill) return samples;
  samples["teacher"] = sample_text(teacher, *config.generate);
  samples["student_before"] = sample_text(student, *config.generate);
  if (!samples["teacher"].get<std::string>().empty()) {
    fmt::print("\nteacher sample:\n{}\n\nstudent sample before training:\n{}\n\n", samples["teacher"].get<std::string>(),
               samples["student_before"].get<std::string>());
  }
  return samples;
}

// The trainer's options for the student run: checkpoints under OUT/checkpoints, fingerprinted by the config
// without its stages (so that a resume may change the stages not yet begun) and by the teacher's weights (a
// teacher.pt replaced under the checkpoints is a different run).
kd::StagedTrainerOptions student_trainer_options(const RunConfig& config, const fs::path& out, const kd::Model& teacher,
                                                 bool self_distill, bool teacher_in_training) {
  const std::string without = config_fingerprint(without_stages(config.document));
  const std::string fingerprint = self_distill ? fmt::format("{} self-distillation", without)
                                               : fmt::format("{} teacher {:08x}", without, data::module_fingerprint(teacher));
  return trainer_options(config)
      .checkpoint_dir((out / "checkpoints").string())
      .checkpoint_every(config.train.checkpoint_every)
      .fingerprint(fingerprint)
      .stage_fingerprints(stage_fingerprints(config))
      .self_distillation(self_distill && teacher_in_training);
}

// teacher.cache: the teacher's outputs over the training set, built into OUT/teacher.cache (or reused when it
// fits) or read from the path given, which must fit this teacher, data and options.
void attach_teacher_cache(kd::StagedTrainerOptions& options, const RunConfig& config, kd::Teacher& teacher,
                          const data::TensorDataset& train, const fs::path& out) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto copts = cache_options(config.teacher.cache, config.specs());
  const std::string& given = config.teacher.cache.path;
  const std::string cache_path = given.empty() ? (out / "teacher.cache").string() : given;
  if (given.empty()) {
    // Data-parallel: each rank runs the teacher over its share of the data into the one file.
    options.teacher_cache(data::TeacherCache::open_or_build(cache_path, teacher, train, copts, process_group().get()));
  } else {
    if (!fs::exists(given)) {
      throw Error(ErrorCategory::kFile,
                  fmt::format("teacher.cache.path '{}' does not exist; leave it empty to build OUT/teacher.cache", given));
    }
    options.teacher_cache(data::TeacherCache::open(given, data::module_fingerprint(*teacher->model()),
                                                   data::dataset_fingerprint(train), copts));
  }
  spdlog::info("teacher cache {}: {:.1f} MiB ({:.1f} s); top_k {}, hidden states [{}], attention maps [{}]",
               cache_path, options.teacher_cache()->bytes() / 1048576.0,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), copts.top_k(),
               fmt::join(copts.hidden_states(), ", "), fmt::join(copts.attentions(), ", "));
}

// The callbacks whose records the summary reads after training.
struct RunRecords {
  std::shared_ptr<StageRecord> stages;
  std::shared_ptr<BestStudent> best;                 // null on other ranks and with train.eval_on_ema
  std::shared_ptr<FloatBeforeQat> float_before_qat;  // null without a QAT stage after another
};

// The main rank's outputs: console, OUT/metrics.jsonl (a fresh log unless the run resumes from a checkpoint;
// MetricsLog cuts what a resumed run does again), TensorBoard, OUT/config.json.
void add_main_rank_logs(kd::StagedTrainer& trainer, const RunConfig& config, const fs::path& out, bool starts_afresh) {
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(config.train.log_every));
  if (starts_afresh) fs::remove(out / "metrics.jsonl");
  trainer.add_callback(std::make_shared<kd::MetricsLog>((out / "metrics.jsonl").string()));
  if (const auto tb = tensorboard_dir(config, "student"); !tb.empty()) {
    trainer.add_callback(std::make_shared<kd::TensorBoardLogger>(tb));
    spdlog::info("TensorBoard: tensorboard --logdir {}", fs::path(tb).parent_path().string());
  }
  trainer.add_callback(save_text_on_fit_begin(out / "config.json", config.document.dump(2) + "\n"));
}

// OUT/student.best.pt's keeper; evaluations in stages whose hooks change the model's structure are not
// candidates. Null with train.eval_on_ema (those scores are the EMA's).
std::shared_ptr<BestStudent> best_student_keeper(const RunConfig& config, const fs::path& out,
                                                 const StudentSetup& student, bool resume) {
  const auto [metric, higher] = best_metric(config);
  if (config.train.trainer.eval_on_ema()) {
    spdlog::info("student.best.pt: not kept with train.eval_on_ema (the validation scores are the EMA's)");
    return nullptr;
  }
  std::set<std::string> skipped;
  for (const auto& spec : student.specs) {
    for (const auto& h : spec.hooks()) {
      if (h == student.lora_hook || h == student.qat_hook) skipped.insert(spec.name());
    }
  }
  return std::make_shared<BestStudent>(out, student.model, metric, higher, skipped, resume);
}

// The float student's test scores at the end of the stage before the first QAT stage, when there is one.
std::shared_ptr<FloatBeforeQat> float_before_qat_probe(const Task& task, const StudentSetup& student,
                                                       const data::TensorDataset& test) {
  for (size_t i = 1; i < student.specs.size() && student.qat_hook; ++i) {
    const auto& h = student.specs[i].hooks();
    if (std::find(h.begin(), h.end(), student.qat_hook) != h.end()) {
      return std::make_shared<FloatBeforeQat>(student.specs[i - 1].name(), task, *student.model, test);
    }
  }
  return nullptr;
}

RunRecords add_callbacks(kd::StagedTrainer& trainer, const RunConfig& config, const fs::path& out,
                         const StudentSetup& student, const data::TensorDataset& test, bool resume, bool starts_afresh) {
  const bool main_rank = is_main_rank();
  RunRecords r;
  r.stages = std::make_shared<StageRecord>(main_rank ? out / "stages.json" : fs::path(), resume);
  if (main_rank) add_main_rank_logs(trainer, config, out, starts_afresh);
  trainer.add_callback(r.stages);
  // A reward policy's weights move after each of its stage's evaluations (weighting.policy "reward").
  for (const auto& feedback : student.reward_feedback) trainer.add_callback(feedback);
  if (main_rank) {
    r.best = best_student_keeper(config, out, student, resume);
    if (r.best) trainer.add_callback(r.best);
  }
  r.float_before_qat = float_before_qat_probe(*config.task, student, test);
  if (r.float_before_qat) trainer.add_callback(r.float_before_qat);
  return r;
}

// The custom task's student goes back to the user's PyTorch as OUT/student.ts.pt: a TorchScript student with
// its parameters trained in place (loadable as it came), a library architecture traced.
void save_student_torchscript(const RunConfig& config, kd::Model& student, const torch::Device& device) {
  const fs::path ts = fs::path(config.out) / "student.ts.pt";
  if (auto* script = dynamic_cast<ScriptModel*>(&student)) {
    write_atomically(ts.string(), [&](const std::string& tmp) { script->module().save(tmp); });
  } else {
    export_torchscript(student, config.task->example_input(config).to(device), ts.string());
  }
  spdlog::info("student: {} (TorchScript, torch.jit.load-able)", ts.string());
}

// The int8 file is the deliverable: its accuracy is measured by loading it into a fresh student, beside the
// float student before QAT and the same trained weights with quantization off (the loss due to int8 alone, free
// of the extra training the QAT stage gave). Last, because it leaves the student in float.
void add_int8_report(json& summary, const RunConfig& config, const StudentSetup& student,
                     const FloatBeforeQat* float_before_qat, const data::TensorDataset& test,
                     const torch::Device& device) {
  const Task& task = *config.task;
  const fs::path int8_path = fs::path(config.out) / "student.int8.pt";
  const auto written = kd::qat::export_int8(*student.model, *student.qat_hook->qat().ptr(), int8_path.string());
  auto fresh = make_student_model(config, /*activation_quant=*/true);
  fresh->to(device);
  kd::qat::load_int8(*fresh, int8_path.string());
  const auto im = task.evaluate(*fresh, test);
  auto row = model_row(student.name + " (int8 file)", *fresh, im);
  row["file_bytes"] = written.file_bytes;
  summary["models"].push_back(row);
  json& int8 = summary["int8"];
  int8["file"] = int8_path.string();
  int8["file_bytes"] = written.file_bytes;
  int8["float32_bytes"] = written.float32_bytes;
  int8["ratio"] = written.ratio();
  int8["test_" + im.headline()] = im.values.front().second;
  const std::string headline = im.headline();
  const bool before_measured = float_before_qat && float_before_qat->measured;
  int8["float_test_" + headline + "_before_qat"] =
      before_measured ? json(float_before_qat->scores.at(headline)) : json(nullptr);
  int8["exclude"] = config.hooks.qat.exclude();
  spdlog::info("{} -> {}", written.to_string(), int8_path.string());
  if (before_measured) {
    summary["models"].push_back(
        model_row(student.name + " (float, before QAT)", *student.model, float_before_qat->scores));
  }
  student.qat_hook->qat().ptr()->restore();
  const auto fm = task.evaluate(*student.model, test);
  int8["float_test_" + headline + "_same_weights"] = fm.at(headline);
  summary["models"].push_back(model_row(student.name + " (float, QAT weights)", *student.model, fm));
}

// What the LoRA and pruning hooks did: ranks and trainable share, sparsity per site.
void add_hook_reports(json& summary, const RunConfig& config, const StudentSetup& student) {
  if (const auto& lora = student.lora_hook) {
    const auto& r = lora->stage_report();
    summary["lora"] = {{"rank", lora->lora()->options().rank()},
                       {"targets", lora->lora()->targets()},
                       {"trainable_parameters", r.trainable},
                       {"total_parameters", r.total},
                       {"trainable_fraction", r.fraction()},
                       {"report", r.to_string()}};
  }
  if (const auto& prune = student.prune_hook) {
    const auto r = prune->pruning()->report();
    json sites = json::array();
    for (const auto& s : r.sites) {
      sites.push_back({{"name", s.name}, {"units", s.units}, {"pruned_units", s.pruned_units},
                       {"parameters", s.parameters}, {"zero_parameters", s.zero_parameters}});
    }
    summary["pruning"] = {{"granularity", prune::kGranularityNames.name(config.hooks.prune.granularity())},
                          {"target_sparsity", prune->pruning()->target_sparsity()},
                          {"covered_parameters", r.parameters},
                          {"zero_parameters", r.zero_parameters},
                          {"sparsity", r.sparsity()},
                          {"sites", sites},
                          {"report", r.to_string()}};
  }
}

// After training: OUT/summary.json with the teacher's and the student's test scores, the stage records, the best
// checkpoint, the int8 file's scores (QAT), the hooks' reports and the samples.
json write_summary(const RunConfig& config, const RunTeacher& teacher, const StudentSetup& student,
                   const RunRecords& records, const Splits& data, const kd::TrainSummary& fit, json samples,
                   bool self_distill, const torch::Device& device) {
  const Task& task = *config.task;
  const auto& test = data.test;
  // Classifiers: the calibration error from the same pass as the scores.
  const int64_t ece_bins = config.evaluation.ece_bins;
  const auto tm = task.evaluate(*teacher.model, test, ece_bins);
  const auto sm = task.evaluate(*student.model, test, ece_bins);
  const std::string student_label = student.qat_hook ? student.name + " (fake-quant)" : student.name;
  json summary = {{"task", task.name()},
                  {"kd_train", build_info()},
                  {"models", {scored_row(teacher.name, *teacher.model, tm, test, config),
                              scored_row(student_label, *student.model, sm, test, config)}},
                  {"teacher_seconds", teacher.seconds},
                  {"seed", config.train.seed},
                  {"test_images", test.size()},
                  {"resumed_from_step", fit.resumed ? json(fit.resumed_from_step) : json(nullptr)},
                  {"self_distillation", self_distill},
                  {"stages", json::array()}};
  if (student.qat_hook) add_int8_report(summary, config, student, records.float_before_qat.get(), test, device);
  double student_seconds = 0;
  for (const auto& row : records.stages->rows) {
    student_seconds += row["seconds"].get<double>();
    summary["stages"].push_back(row);
  }
  summary["student_seconds"] = student_seconds;
  if (records.best && records.best->best.is_object()) summary["best"] = records.best->best;
  const std::string headline = sm.headline();
  if (task.higher_is_better()) {
    summary["retained_" + headline] = sm.at(headline) / tm.at(headline);
  } else {
    summary[headline + "_gap"] = sm.at(headline) - tm.at(headline);
  }
  add_hook_reports(summary, config, student);
  if (!samples.is_null() && !samples["teacher"].get<std::string>().empty()) {
    samples["student_after"] = sample_text(*student.model, *config.generate);
    const GenerateConfig& g = *config.generate;
    samples["generate"] = {{"prompt", g.prompt}, {"tokens", g.tokens}, {"temperature", g.temperature},
                           {"top_k", g.top_k}, {"seed", g.seed}};
    summary["samples"] = samples;
  }
  summary["task_title"] = task.title();
  summary["validation_examples"] = data.validation.size();
  summary["out"] = config.out;
  summary["headline"] = headline;
  summary["higher_is_better"] = task.higher_is_better();
  summary["scores"] = json::array();
  for (const auto& kv : sm.values) summary["scores"].push_back(kv.first);
  save_text(fs::path(config.out) / "summary.json", summary.dump(2) + "\n");
  return summary;
}

// Trains the config's student (the teacher first when it is missing) and writes OUT/student.pt and
// OUT/summary.json; returns the summary on the main rank, null on the others.
json distill_student(const RunConfig& resolved, bool resume, bool dry_run) {
  const bool self_distill = self_distillation(resolved);  // refused here when it cannot work with the rest
  best_metric(resolved);  // a misspelt metric stops here, before any training
  const torch::Device device = set_up_process(resolved);
  const Task& task = *resolved.task;
  const fs::path out(resolved.out);
  // The user's models: the widths of the layers feature terms pair come from one forward pass of each.
  std::optional<Splits> loaded;
  if (!task.trains_teacher()) loaded = load_splits(resolved, device);
  const RunConfig config = loaded ? with_feature_dims(resolved, loaded->train, device) : resolved;
  const auto specs = config.specs();
  refuse_cached_mixture(config);
  // Hooks that do not fit the student (a LoRA target it lacks) fail now, not after the teacher trained.
  const int64_t student_bytes = [&] {
    const GeneratorsKept kept;
    return parameter_bytes(*build_student(config, out).model);
  }();
  refuse_stale_checkpoints(out / "checkpoints", resume);
  const Splits data = loaded ? std::move(*loaded) : load_splits(config, device);
  // The teacher trains on every label; the student's hard-label terms may see only some (data.student_labels).
  const double labelled = config.data.student_labels;
  const auto train = labelled < 1 ? data::keep_labels(data.train, labelled, config.data.split_seed) : data.train;
  check_stages_before_training(config, out, data, train, device);
  if (dry_run) {
    spdlog::info("dry run: the config, the data ({} / {} / {} examples) and the {} stage(s) check out on {}; nothing "
                 "was trained or written",
                 data.train.size(), data.validation.size(), data.test.size(), specs.size(), config.out);
    return json{{"dry_run", true}};
  }
  const bool main_rank = is_main_rank();  // the only rank that writes (data-parallel runs)
  if (main_rank) {
    ensure_output_folder(out);
    // Checkpoints hold the student, two AdamW moments and the EMA; keep_last + 1 exist while one is written.
    require_free_space(out, (4 * (config.train.trainer.keep_last() + 1) + 2) * student_bytes + (1 << 20),
                       "distilling the student (its checkpoints and student.pt)");
  }
  if (labelled < 1) {
    spdlog::info("student: labels of {} of the {} training examples (data.student_labels {}); the rest are -100",
                 (train.targets != -100).sum().item<int64_t>(), train.size(), labelled);
  }
  const RunTeacher teacher = prepare_teacher(config, data, device, resume, self_distill);
  kd::Teacher live_teacher(teacher.model);  // frozen (eval mode) from here on, samples included
  // Stages of hard labels only train the student alone (a baseline): the teacher is scored, not run.
  const bool teacher_in_training = stages_read_teacher(specs);
  StudentSetup student = build_student(config, out);
  student.model->to(device);
  log_plan(specs, student, teacher_in_training);
  json samples = samples_before_training(config, self_distill, *teacher.model, *student.model);
  // Nothing to resume from: a fresh stage record and a fresh log.
  const bool starts_afresh = !resume || first_checkpoint(out / "checkpoints").empty();
  if (main_rank && starts_afresh) fs::remove(out / "stages.json");
  auto options = student_trainer_options(config, out, *teacher.model, self_distill, teacher_in_training);
  if (config.teacher.cache.enabled && teacher_in_training) attach_teacher_cache(options, config, live_teacher, train, out);
  kd::StagedTrainer trainer(kd::Student(student.model),
                            teacher_in_training && !self_distill ? std::optional<kd::Teacher>(live_teacher) : std::nullopt,
                            kd::build_stages(student.specs), options);
  const RunRecords records = add_callbacks(trainer, config, out, student, data.test, resume, starts_afresh);
  const auto fit = fit_stoppable(trainer, train, data.validation, resume, "student.pt and summary.json were not written");
  if (fit.resumed) spdlog::info("resumed from step {}", fit.resumed_from_step);
  if (!main_rank) return json();  // rank 0 holds the same student and writes and reports it
  save_module(student.model, out / "student.pt");
  if (self_distill) trainer.ema()->copy_to(*kd::Student(teacher.model));  // the last step's teacher, scored below
  if (!task.trains_teacher()) save_student_torchscript(config, *student.model, device);
  return write_summary(config, teacher, student, records, data, fit, std::move(samples), self_distill, device);
}


std::string heading(const std::string& k) { return metric::info(k).heading; }

// The stage table, the test table and the run's one-line verdicts, from a summary written by distill_student.
void print_report(const json& summary) {
  // Columns: the task's scores (classification: accuracy, macro-F1; LM: bits/byte, perplexity, token accuracy).
  const auto columns = summary["scores"].get<std::vector<std::string>>();
  auto cell = [](const std::string& k, const json& v) {
    if (!v.is_number()) return fmt::format("{:>10}", "-");
    const double x = v.get<double>();
    return k == metric::kAccuracy || k == metric::kTokenAccuracy ? fmt::format("{:>9.2f}%", 100 * x)
                                                                  : fmt::format("{:>10.4f}", x);
  };
  fmt::print("\nStages (validation set, {} examples)\n", summary["validation_examples"].get<int64_t>());
  fmt::print("  {:<12} {:>7} {:>9}", "stage", "steps", "seconds");
  for (const auto& c : columns) fmt::print(" {:>10}", heading(c));
  fmt::print("\n");
  for (const auto& row : summary["stages"]) {
    fmt::print("  {:<12} {:>7} {:>9.1f}", row["stage"].get<std::string>(), row["steps"].get<int64_t>(),
               row["seconds"].get<double>());
    for (const auto& c : columns) fmt::print(" {}", cell(c, row.value("validation_" + c, json())));
    fmt::print("\n");
  }
  fmt::print("\nResult ({} test set, {} examples)\n", summary["task_title"].get<std::string>(),
             summary["test_images"].get<int64_t>());
  // KiB: float32 parameters, or the file for the int8 row.
  fmt::print("  {:<40} {:>10} {:>10}", "model", "params", "KiB");
  for (const auto& c : columns) fmt::print(" {:>10}", heading(c));
  fmt::print("\n");
  auto rows = summary["models"];
  if (summary.contains("baseline")) rows.push_back(summary["baseline"]["model"]);
  for (const auto& row : rows) {
    const int64_t bytes = row.contains("file_bytes") ? row["file_bytes"].get<int64_t>() : row["parameter_bytes"].get<int64_t>();
    fmt::print("  {:<40} {:>10} {:>10.1f}", row["model"].get<std::string>(), row["parameters"].get<int64_t>(),
               bytes / 1024.0);
    for (const auto& c : columns) fmt::print(" {}", cell(c, row.value("test_" + c, json())));
    fmt::print("\n");
  }
  if (summary.contains("best")) {
    const auto& b = summary["best"];
    fmt::print("  best validation {} {:.4f} at step {} (stage {}): {}\n", heading(b["metric"].get<std::string>()),
               b["value"].get<double>(), b["global_step"].get<int64_t>(), b["stage"].get<std::string>(),
               b["file"].get<std::string>());
  }
  if (summary.contains("lora")) fmt::print("  LoRA stage(s): {}\n", summary["lora"]["report"].get<std::string>());
  if (summary.contains("pruning")) fmt::print("  {}\n", summary["pruning"]["report"].get<std::string>());
  const auto& teacher = summary["models"][0];
  const auto& student = summary["models"][1];
  const std::string headline = summary["headline"];
  const double tp = teacher["parameters"].get<double>(), sp = student["parameters"].get<double>();
  const double ts = teacher["test_" + headline].get<double>(), ss = student["test_" + headline].get<double>();
  if (summary["higher_is_better"].get<bool>()) {
    fmt::print("  student: {:.1f}% of the teacher's parameters, {:.1f}% of its {}\n", 100 * sp / tp, 100 * ss / ts,
               heading(headline));
  } else {
    fmt::print("  student: {:.1f}% of the teacher's parameters, {} {:+.4f} against the teacher's\n", 100 * sp / tp,
               heading(headline), ss - ts);
  }
  std::vector<std::string> extra;
  for (const auto& row : rows) {
    std::vector<std::string> parts;
    if (row.contains("test_ece")) parts.push_back(fmt::format("ECE {:.4f}", row["test_ece"].get<double>()));
    if (row.contains("test_fgsm_accuracy")) {
      parts.push_back(fmt::format("accuracy under FGSM (ε {}) {:.2f}%", row["fgsm_epsilon"].get<double>(),
                                  100 * row["test_fgsm_accuracy"].get<double>()));
    }
    if (!parts.empty()) extra.push_back(fmt::format("{}: {}", row["model"].get<std::string>(), fmt::join(parts, ", ")));
  }
  if (!extra.empty()) fmt::print("  {}\n", fmt::join(extra, "; "));
  if (summary.contains("distillation_gain")) {
    std::vector<std::string> parts;
    for (const auto& c : columns) {
      if (!summary["distillation_gain"].contains(c)) continue;
      const double g = summary["distillation_gain"][c].get<double>();
      parts.push_back(metric::info(c).share ? fmt::format("{} {:+.2f} points", heading(c), 100 * g)
                                       : fmt::format("{} {:+.4f}", heading(c), g));
    }
    fmt::print("  distillation against the same student alone (same steps, schedule and seed): {}{}\n",
               fmt::join(parts, ", "), summary["higher_is_better"].get<bool>() ? "" : " (lower is better)");
  }
  if (summary.contains("int8")) {
    fmt::print("  int8 file: {} bytes = {:.2f} x the float32 state\n", summary["int8"]["file_bytes"].get<int64_t>(),
               summary["int8"]["ratio"].get<double>());
  }
  if (summary.contains("samples")) {
    fmt::print("\nstudent sample after training:\n{}\n\n", summary["samples"]["student_after"].get<std::string>());
  }
  const bool custom = summary.value("task", "") == "custom";  // its teacher is the user's file; its student also .ts.pt
  fmt::print("  written: {}/{{{}student.pt{}{}{}, summary.json, config.json, metrics.jsonl, checkpoints/{}}}\n",
             summary["out"].get<std::string>(),
             custom || summary.value("self_distillation", false) ? "" : "teacher.pt, ", custom ? ", student.ts.pt" : "",
             summary.contains("int8") ? ", student.int8.pt" : "",
             summary.contains("lora") ? ", lora_adapter.pt" : "", summary.contains("baseline") ? ", baseline/" : "");
}

}  // namespace

RunConfig baseline_config(const RunConfig& config) {
  const fs::path out(config.out);
  return reparsed(config, [&](json& b) {
    b["out"] = (out / "baseline").string();
    // The distilled run's teacher: only scored in the baseline's summary, never run while it trains (with
    // self-distillation there is none: the baseline's summary scores its own student's EMA).
    if (config.task->trains_teacher() && !config.teacher.self_distillation) {
      b["teacher"]["path"] = config.teacher.path.empty() ? (out / "teacher.pt").string() : config.teacher.path;
    }
    b["teacher"]["cache"]["enabled"] = false;
    // Its own TensorBoard run beside the distilled one: OUT/baseline/tensorboard, or baseline/ in a given folder.
    if (const std::string& tb = config.train.tensorboard; !tb.empty() && tb != "none") {
      b["train"]["tensorboard"] = (fs::path(tb) / "baseline").string();
    }
    b["train"]["hard_example_mix"] = 0.0;  // mining ranks examples by the teacher
    for (auto& stage : b["stages"]) {
      stage["losses"] = json::array({{{"type", "hard_label_ce"}, {"name", "ce"}, {"weight", 1.0}}});
      stage.erase("weighting");  // one term: nothing to weigh
    }
  });
}

json distillation_gain(const json& distilled, const json& alone) {
  json gain = json::object();
  for (const auto& c : distilled["scores"]) {
    const std::string key = "test_" + c.get<std::string>();
    const auto& d = distilled["models"][1];
    const auto& a = alone["models"][1];
    if (d.contains(key) && a.contains(key) && d[key].is_number() && a[key].is_number()) {
      gain[c.get<std::string>()] = d[key].get<double>() - a[key].get<double>();
    }
  }
  return gain;
}

int run_distill(const RunConfig& config, bool resume, bool baseline, bool dry_run) {
  if (dry_run) {  // no lock either: a dry run writes nothing, not even the run folder
    distill_student(config, resume, true);
    if (baseline) distill_student(baseline_config(config), resume, true);
    return 0;
  }
  const auto lock = lock_run_folder(config.out);  // OUT/baseline included
  json summary = distill_student(config, resume, false);
  if (baseline) {
    spdlog::info("baseline: the same student on hard labels alone, with the same stages, steps, schedule and seed");
    const json alone = distill_student(baseline_config(config), resume, false);
    if (!summary.is_null()) {
      json row = alone["models"][1];
      row["model"] = row["model"].get<std::string>() + " alone (baseline)";
      summary["baseline"] = {{"out", alone["out"]}, {"model", row}, {"student_seconds", alone["student_seconds"]},
                             {"stages", alone["stages"]}};
      summary["distillation_gain"] = distillation_gain(summary, alone);
      save_text(fs::path(summary["out"].get<std::string>()) / "summary.json", summary.dump(2) + "\n");
    }
  }
  if (!summary.is_null()) print_report(summary);
  return 0;
}

}  // namespace kd::app
