// kd-train: the command-line front end of kdistill.
//
//   kd-train teacher [common options]                 train the task's teacher into OUT/teacher.pt
//   kd-train distill [common options] [--resume] [--baseline] [--dry-run]
//                                                     teacher (trained or loaded), then the config's stages;
//                                                     --baseline: also the student alone, and the gain;
//                                                     --dry-run: check everything, train and write nothing
//   kd-train eval    [common options] [--model FILE] [--which student|teacher] [--json]
//   kd-train export  [common options] [--model FILE] [--which student|teacher] [--format torchscript|int8]
//                    [--to FILE] [--with-layers] [--calibration-batches N] [--compact]
//   kd-train list
//   kd-train schema  [--task T] [--markdown]          the JSON Schema of a task's config (or the key reference)
//   kd-train --plugin FILE.so ...                     load losses a shared library registers (repeatable)
//   kd-train --version | --log-level L | --quiet     versions; how much the log shows (any subcommand)
//   --print-config (teacher, distill, eval, export)  the resolved config, then exit
//   kd-train --nproc N teacher|distill ...            N data-parallel ranks on this machine (c10d Gloo)
//
// common options: [--config FILE]... [--set key.path=value]... [--out DIR] [--device D] [--seed N] [--threads N]
//                 [--tensorboard DIR|none]
//
// Exit status: 0 done; 2 bad input (command line, config, files, state of the run folder), with a message
// naming the flag, JSON path or file; 3 an error inside LibTorch; 1 anything else; 128 + N ended by signal N.
// Progress goes to stdout, warnings and errors to stderr.
//
// SIGINT / SIGTERM while training: the step in progress finishes, a checkpoint is written, and kd-train
// ends by the same signal (the shell shows 130 / 143); `--resume` continues from there. A second
// Ctrl-C or SIGTERM kills at once.
//
// With no arguments `distill` runs the default recipe on Fashion-MNIST: train a
// CNN teacher from scratch (no pretrained weights can be downloaded), then
// distill a depthwise-separable student with the progressive three-stage recipe
// (features -> + attention -> + KL(T=3) and hard labels; kd::progressive3).
// "task": "spam" or "byte_lm" in a config (or --set task=spam) switches to the
// SpamAssassin tasks (configs/spam_transformer.json, configs/byte_lm.json).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/app/kd_train.h"

#include "build_info.h"
#include "commands.h"
#include "config.h"
#include "config_schema.h"
#include "kd/core/error.h"
#include "kd/dist/process_group.h"
#include "kd/train/stop_signal.h"
#include "launcher.h"
#include "plugins.h"
#include "run_context.h"
#include "task.h"

namespace {

// Info and below to stdout, warnings and errors to stderr, each with the console's colours.
class ByLevelSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    (msg.level >= spdlog::level::warn ? static_cast<spdlog::sinks::sink&>(err_) : out_).log(msg);
  }
  void flush_() override {
    out_.flush();
    err_.flush();
  }
  void set_pattern_(const std::string& pattern) override {
    out_.set_pattern(pattern);
    err_.set_pattern(pattern);
  }
  void set_formatter_(std::unique_ptr<spdlog::formatter> formatter) override {
    out_.set_formatter(formatter->clone());
    err_.set_formatter(std::move(formatter));
  }

 private:
  spdlog::sinks::stdout_color_sink_st out_;
  spdlog::sinks::stderr_color_sink_st err_;
};


// Every value the command line sets. CLI11 options keep references to these, so one instance must
// outlive the parse and everything that reads the results.
struct CliOptions {
  std::vector<std::string> configs, sets;
  std::string out, device, model_file, which = "student", tensorboard;
  int64_t seed = -1, threads = -1;
  bool resume = false, baseline = false, print_config = false, quiet = false, dry_run = false;
  std::string log_level = "info";
  int nproc = 1;
  std::vector<std::string> plugins;
  bool eval_json = false;
  kd::app::ExportArgs export_args;
  std::string schema_task = "fashion_mnist";
  bool schema_markdown = false;
};

struct Subcommands {
  CLI::App* teacher;
  CLI::App* distill;
  CLI::App* eval;
  CLI::App* exp;
  CLI::App* list;
  CLI::App* schema;
};

// Options that apply whichever subcommand follows.
void add_global_options(CLI::App& app, CliOptions& o) {
  app.set_version_flag("--version", kd::app::version_text(), "print kdistill's, LibTorch's and the build's versions");
  app.add_option("--log-level", o.log_level, "what the log shows: trace, debug, info (default), warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_flag("--quiet,-q", o.quiet, "warnings and errors only (same as --log-level warn); results are still printed");
  app.add_option("--nproc", o.nproc,
                 "data-parallel: start N ranks of teacher/distill on this machine (c10d Gloo over loopback); for "
                 "several machines start each rank yourself with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set")
      ->check(CLI::Range(1, 256));
  app.add_option("--plugin", o.plugins,
                 "a shared library whose KD_REGISTER_LOSS losses configs may then name (repeatable; `kd-train list` "
                 "shows them)");
}

// The config options every subcommand but `list` takes; `defaults` becomes the help's footer.
void add_common_options(CLI::App* cmd, CliOptions& o, const std::string& defaults) {
  cmd->add_option("--config", o.configs, "JSON config file (repeatable; later files override earlier)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--set", o.sets, "override one key, e.g. --set stages.2.epochs=3 (repeatable; wins over files)");
  cmd->add_option("--out", o.out, "output folder (same as --set out=DIR)");
  cmd->add_option("--device", o.device, "cpu, cuda, cuda:N or auto (same as --set train.device=...)");
  cmd->add_option("--seed", o.seed, "random seed (same as --set train.seed=N)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o.threads, "intra-op threads, 0 = all cores (same as --set train.threads=N)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--print-config", o.print_config, "print the resolved config (defaults, files, --set) and exit");
  cmd->footer(defaults);
}

// `teacher` and `distill`, added in this order so --help lists them so.
void add_training_subcommands(CLI::App& app, CliOptions& o, const std::string& defaults, Subcommands& s) {
  s.teacher = app.add_subcommand("teacher", "train the task's teacher from scratch into OUT/teacher.pt");
  add_common_options(s.teacher, o, defaults);
  s.distill = app.add_subcommand(
      "distill", "distill a student from a teacher; with no config: the default Fashion-MNIST recipe");
  add_common_options(s.distill, o, defaults);
  s.distill->add_flag("--resume", o.resume,
                      "continue from the newest checkpoint in OUT/checkpoints (same config; the teacher is reloaded)");
  s.distill->add_flag("--baseline", o.baseline,
                      "also train the same student on hard labels alone (same stages, steps, schedule and seed) into "
                      "OUT/baseline and report what distillation gained over it");
  s.distill->add_flag("--dry-run", o.dry_run,
                      "check the config, the data and every stage on two examples (untrained models), then stop: "
                      "nothing is trained or written");
  s.teacher->add_flag("--resume", o.resume, "continue from the newest checkpoint in OUT/teacher_checkpoints");
  for (auto* cmd : {s.distill, s.teacher}) {
    cmd->add_option("--tensorboard", o.tensorboard,
                    "TensorBoard event files go to DIR/student and DIR/teacher (default OUT/tensorboard); none: "
                    "not written (same as --set train.tensorboard=DIR)");
  }
}

CLI::App* add_eval_subcommand(CLI::App& app, CliOptions& o, const std::string& defaults) {
  auto* eval = app.add_subcommand("eval", "test-set scores of a saved model (accuracy, macro-F1 and per-class F1; "
                                          "language models: bits per byte, perplexity, token accuracy)");
  add_common_options(eval, o, defaults);
  eval->add_option("--which", o.which, "the architecture to load: student (the config's) or teacher")
      ->check(CLI::IsMember({"student", "teacher"}));
  eval->add_option("--model", o.model_file, "the saved model (default: OUT/<which>.pt)")->check(CLI::ExistingFile);
  eval->add_flag("--json", o.eval_json,
                 "print the scores as one JSON object on stdout (model, file, parameters, examples, scores, "
                 "per-class F1), and log warnings and errors only");
  return eval;
}

CLI::App* add_export_subcommand(CLI::App& app, CliOptions& o, const std::string& defaults) {
  kd::app::ExportArgs& export_args = o.export_args;
  auto* exp = app.add_subcommand("export", "write a trained model as a TorchScript file or (students) an int8 file");
  add_common_options(exp, o, defaults);
  exp->add_option("--which", export_args.which, "the architecture to load: student (the config's) or teacher")
      ->check(CLI::IsMember({"student", "teacher"}));
  exp->add_option("--model", export_args.model_file, "the saved model (default: OUT/<which>.pt)")->check(CLI::ExistingFile);
  exp->add_option("--format", export_args.format,
                  "torchscript (torch.jit.load-able; default) or int8 (kd::qat::load_int8-able, calibrated on training "
                  "batches when the model was trained in float)")
      ->check(CLI::IsMember({"torchscript", "int8"}));
  exp->add_option("--to", export_args.to, "the file to write (default: OUT/<which>.ts.pt or OUT/<which>.int8.pt)");
  exp->add_flag("--with-layers", export_args.with_layers,
                "TorchScript: forward returns (logits, hidden_states, attentions), so the file can be a teacher");
  exp->add_option("--calibration-batches", export_args.calibration_batches,
                  "int8: training batches (train.batch_size each) the observers see before quantizing")
      ->check(CLI::Range(1, 1000000));
  exp->add_flag("--compact", export_args.compact,
                "TorchScript: first remove the attention heads and feed-forward channels pruning zeroed (kd::prune::compact); "
                "prints the parameters, file bytes and forward time of the dense and the compact model");
  return exp;
}

// The whole command line, bound to `o`; the subcommands in the order --help lists them.
Subcommands set_up_cli(CLI::App& app, CliOptions& o) {
  app.require_subcommand(1);
  app.fallthrough();  // --nproc may come after the subcommand too
  add_global_options(app, o);
  const std::string defaults =
      "Defaults of task fashion_mnist (every key a config may set; `kd-train list` shows the other tasks' data, "
      "teacher and student keys):\n" +
      kd::app::distill_defaults().dump(2);
  Subcommands s{};
  add_training_subcommands(app, o, defaults, s);
  s.eval = add_eval_subcommand(app, o, defaults);
  s.exp = add_export_subcommand(app, o, defaults);
  s.list = app.add_subcommand("list", "list the registered losses (with their option keys), tasks, models and data sets");
  s.schema = app.add_subcommand("schema", "print the JSON Schema of a task's config: every key with its type, "
                                          "default, limits, allowed values and meaning");
  s.schema->add_option("--task", o.schema_task, "the task whose config it describes (default fashion_mnist)")
      ->check(CLI::IsMember(kd::app::task_names()));
  s.schema->add_flag("--markdown", o.schema_markdown,
                     "print the key reference of every task as Markdown instead (docs/CONFIG.md's, generated)");
  return s;
}

// Runs this command line again as `nproc` local ranks, less --nproc; returns their combined status.
int launch_ranks(int argc, char** argv, const CliOptions& o, const Subcommands& s) {
  if (kd::dist::environment_has_ranks()) {
    throw kd::Error(kd::ErrorCategory::kConfig,
                    "--nproc starts the ranks itself, but WORLD_SIZE is already set in the environment (this is "
                    "one rank of a job): drop --nproc, or unset RANK/WORLD_SIZE");
  }
  if (!*s.distill && !*s.teacher) {
    throw kd::Error(kd::ErrorCategory::kConfig, "--nproc applies to `teacher` and `distill` only");
  }
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--nproc") { ++i; continue; }
    if (arg.rfind("--nproc=", 0) == 0) continue;
    args.push_back(arg);
  }
  kd::app::LaunchOptions launch;
  launch.nproc = o.nproc;
  launch.name = argv[0];
  const int status = kd::app::launch_local_ranks("/proc/self/exe", args, launch);
  const int signal = kd::app::forwarded_signal();
  if (signal && status == kd::StopSignal::exit_code(signal)) return kd::StopSignal::exit_by(signal);
  return status;
}

// After a successful parse: the chosen subcommand's work and its exit status; errors propagate.
int run_command(int argc, char** argv, CliOptions& o, const Subcommands& s) {
  const auto plugin_losses = kd::app::load_plugins(o.plugins);  // before any config names their losses
  if (o.nproc > 1) return launch_ranks(argc, argv, o, s);
  if (*s.list) return kd::app::run_list(plugin_losses);
  if (*s.schema) {
    fmt::print("{}\n", o.schema_markdown ? kd::app::config_reference_markdown()
                                         : kd::app::config_schema(o.schema_task).dump(2));
    return 0;
  }
  // Named flags are shorthands for --set and win over it, as the command line's last word.
  if (!o.out.empty()) o.sets.push_back("out=" + nlohmann::json(o.out).dump());
  if (!o.device.empty()) o.sets.push_back("train.device=" + nlohmann::json(o.device).dump());
  if (o.seed >= 0) o.sets.push_back("train.seed=" + std::to_string(o.seed));
  if (o.threads >= 0) o.sets.push_back("train.threads=" + std::to_string(o.threads));
  if (!o.tensorboard.empty()) o.sets.push_back("train.tensorboard=" + nlohmann::json(o.tensorboard).dump());
  const auto config = kd::app::resolve_config(o.configs, o.sets);
  if (o.print_config) {
    fmt::print("{}\n", config.dump(2));
    return 0;
  }
  const auto run = kd::app::parse_run_config(config);
  if (*s.teacher) return kd::app::run_teacher(run, o.resume);
  if (*s.distill) return kd::app::run_distill(run, o.resume, o.baseline, o.dry_run);
  if (*s.eval) return kd::app::run_eval(run, o.which, o.model_file, o.eval_json);
  if (*s.exp) return kd::app::run_export(run, o.export_args);
  return 0;
}

}  // namespace

namespace kd::app {

int kd_train_main(int argc, char** argv) {
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("", std::make_shared<ByLevelSink>()));
  CLI::App app{"kd-train: knowledge distillation with kdistill"};
  CliOptions o;
  const Subcommands s = set_up_cli(app, o);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints the help, or the error and how to get help
    return code == 0 ? 0 : 2;     // a command-line mistake is bad input, like a config's
  }
  // --json keeps stdout for the JSON object alone.
  spdlog::set_level(o.quiet || o.eval_json ? spdlog::level::warn : spdlog::level::from_str(o.log_level));
  try {
    return run_command(argc, argv, o, s);
  } catch (const kd::app::Stopped& e) {
    spdlog::warn("{}", e.what());
    spdlog::default_logger()->flush();
    return kd::StopSignal::exit_by(e.signal);
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
}

}  // namespace kd::app
