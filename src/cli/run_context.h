#pragma once
// What kd-train's subcommands share: the process set-up, the data splits, the teacher (trained or loaded)
// and the student with its stage hooks, all from a typed config (run_config.h).

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/kd.h"
#include "run_config.h"
#include "task.h"

namespace kd::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// Thrown when SIGINT/SIGTERM stopped training (kd::StopSignal): kd-train prints `what()` and ends by
/// the same signal (kd::StopSignal::exit_by), so the shell reports 130 / 143.
struct Stopped : std::runtime_error {
  Stopped(int signal, const std::string& what) : std::runtime_error(what), signal(signal) {}
  int signal;
};

/// Creates the output folder and proves it writable (a probe file written atomically, then removed);
/// kd::Error (kFile) naming the folder, the reason and the fix otherwise.
void ensure_output_folder(const fs::path& out);

/// kd::Error (kFile) when the file system of `folder` has less than `bytes` available, naming both
/// and what needs the space — before training starts, rather than failing at a checkpoint hours in.
void require_free_space(const fs::path& folder, int64_t bytes, const std::string& what);

/// Threads (0 = every core, shared out among the local ranks), the seed, and — when the environment
/// names several ranks (kd-train --nproc N, or torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT)
/// — the data-parallel group; ranks other than 0 log warnings and errors only, prefixed "[rank N]".
/// Returns the resolved device (cuda:LOCAL_RANK for CUDA ranks).
torch::Device set_up_process(const RunConfig& config);

/// This process's data-parallel group (null for a single process); set by set_up_process.
const std::shared_ptr<dist::ProcessGroup>& process_group();
/// Rank 0 or a single process: the one that writes outputs (models, summaries, metrics, checkpoints).
bool is_main_rank();

/// The task's train/validation/test splits as the config's data section says (Task::load_splits).
Splits load_splits(const RunConfig& config, const torch::Device& device);

/// Atomic writes of a module's state and of a text file.
void save_module(const std::shared_ptr<torch::nn::Module>& module, const fs::path& path);
void save_text(const fs::path& path, const std::string& text);
/// A callback that writes `text` to `path` when fit() begins, i.e. once the trainer has accepted the run (a
/// resume's checkpoint matched the config's fingerprint): a refused run leaves the folder as it found it.
std::shared_ptr<Callback> save_text_on_fit_begin(const fs::path& path, const std::string& text);
/// Loads a module state written by save_module; kd::Error (kFile) if missing, (kFormat) if not loadable,
/// naming the file and what `what` it should have held.
void load_module(torch::nn::Module& module, const fs::path& path, const torch::Device& device, const std::string& what);

/// Whether `path` names an int8 student file ("*.int8.pt", written by kd::qat::export_int8).
bool is_int8_file(const fs::path& path);

/// A model read from a file, with its display name.
struct LoadedModel {
  std::shared_ptr<Model> model;
  std::string name;
  std::optional<std::string> int8_report;  ///< for an int8 file: what load_int8 reported
};
/// The config's teacher or student architecture (`which`: "teacher" or "student") with the weights in
/// `path`: a float state (teacher.pt, student.pt) or, for the student, an int8 file (loaded into a fresh
/// student with its activation quantization points). kd::Error naming the file when it is missing,
/// damaged or of another architecture.
LoadedModel load_model_file(const RunConfig& config, const std::string& which, const fs::path& path,
                            const torch::Device& device);

/// One fingerprint per stage (StageConfig::fingerprint): with config_fingerprint of the config without its
/// stages, a resume may change the stages its checkpoint has not begun (StagedTrainerOptions::stage_fingerprints).
std::vector<std::string> stage_fingerprints(const RunConfig& config);
/// The train section's trainer options with the run's process group, batch size, seed, precision and task.
StagedTrainerOptions trainer_options(const RunConfig& config);
/// A summary.json row: {"model", "parameters", "parameter_bytes", "test_<score>" for each score}.
json model_row(const std::string& name, const torch::nn::Module& m, const Scores& test);

/// The teacher kd-train distils from, with its display name.
struct TeacherModel {
  std::shared_ptr<Model> model;
  std::string name;
};
/// OUT/teacher.pt (or teacher.path) if it exists, else the task's teacher trained from scratch for
/// teacher.steps (when > 0) or teacher.epochs and saved there, with checkpoints in OUT/teacher_checkpoints
/// (continued when `resume`). `seconds` receives the time spent.
TeacherModel train_or_load_teacher(const RunConfig& config, const torch::Device& device, const Splits& data,
                                   double& seconds, bool resume);

/// `first` joined by the teacher files of the config's teacher.ensemble into one kd::MultiTeacherImpl (their soft
/// targets mixed with teacher.ensemble_weights at teacher.ensemble_temperature), or `first` itself when the list is
/// empty; `name` (when given) becomes "ensemble of N: ...". kd::Error naming the entry when a file is missing or
/// of another architecture, or the weights do not fit (the check before training calls it too, so these stop a
/// run before its teacher trains).
std::shared_ptr<Model> ensemble_teacher(const RunConfig& config, std::shared_ptr<Model> first, std::string* name,
                                        const torch::Device& device);

/// Refuses to start a fresh run (not `resume`) over checkpoints of an earlier one in `dir`: resuming would
/// later mix the two, and pruning would delete the new run's checkpoints (kd::Error naming the folder).
void refuse_stale_checkpoints(const fs::path& dir, bool resume);
/// The name of a checkpoint (ckpt-*) in `dir`, or "" when it holds none (or does not exist).
std::string first_checkpoint(const fs::path& dir);

/// trainer.fit inside a kd::StopSignal::Scope; throws Stopped (saying what `what_is_lost` and how to go on)
/// when SIGINT/SIGTERM ended it, also when the signal came during the very last step.
TrainSummary fit_stoppable(StagedTrainer& trainer, const data::TensorDataset& train,
                           const data::TensorDataset& validation, bool resume, const std::string& what_is_lost);

/// Where the TensorBoard events of `run` ("student", "teacher") go: OUT/tensorboard/RUN, or RUN inside the
/// config's train.tensorboard folder; "" when train.tensorboard is "none".
std::string tensorboard_dir(const RunConfig& config, const std::string& run);

/// The student the config names, with its stage hooks (one object per kind, shared by every stage listing it).
struct StudentSetup {
  std::shared_ptr<Model> model;
  std::string name;
  std::vector<StageSpec> specs;  // with hooks
  std::shared_ptr<lora::Hook> lora_hook;
  std::shared_ptr<qat::Hook> qat_hook;
  std::shared_ptr<prune::Hook> prune_hook;
  /// One per stage whose "weighting" is a reward policy: the trainer's callbacks that feed it.
  std::vector<std::shared_ptr<RewardFeedback>> reward_feedback;
};
/// The student of `config` with the hooks and weighting policies its stages name (a LoRA adapter is saved
/// into `out`). Its activation quantization points are there when a stage lists "qat".
StudentSetup build_student(const RunConfig& config, const fs::path& out);
/// The task's student architecture; with `activation_quant` (a "qat" stage, or loading an int8 file) its
/// activation quantization points (models that have them).
std::shared_ptr<Model> make_student_model(const RunConfig& config, bool activation_quant, std::string* name = nullptr);
/// Whether any stage's loss reads the teacher: false when every term is hard_label_ce (the student trained
/// alone, as a baseline), and then the trainer runs no teacher.
bool stages_read_teacher(const std::vector<StageSpec>& specs);
/// Whether the config's teacher is the student's own EMA (teacher.self_distillation). kd::Error (kConfig)
/// naming the key and the fix when it is on with what cannot serve it: no train.ema_decay, a teacher file,
/// an ensemble, the teacher cache, hard-example mining, or a stage hook that rewrites the weights (lora, qat,
/// prune).
bool self_distillation(const RunConfig& config);
/// The validation scores the task's evaluations report ("accuracy", "macro_f1"; or the language models'
/// "bits_per_byte", "perplexity", "token_accuracy"), and which way each is better.
std::vector<std::string> validation_scores(const Task& task);
bool higher_is_better(const std::string& score);
/// The validation score that picks OUT/student.best.pt (evaluation.best_metric, else the task's headline) and
/// whether higher is better; kd::Error (kConfig) naming the task's scores for one it does not report.
std::pair<std::string, bool> best_metric(const RunConfig& config);

}  // namespace kd::app
