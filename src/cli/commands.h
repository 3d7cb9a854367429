#pragma once
// kd-train's subcommands, each given the resolved config parsed into types (run_config.h).

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "run_config.h"

namespace kd::app {

/// Teacher (trained or loaded), then the config's stages on the student; summary table and summary.json.
/// With `baseline`, then the same student on hard labels alone (baseline_config) into OUT/baseline, and
/// the difference of every test score (distilled − alone) as summary.json's "distillation_gain".
/// `dry_run`: check the config, the data and every stage on two examples (untrained models), then stop
/// without training or writing anything.
int run_distill(const RunConfig& config, bool resume, bool baseline = false, bool dry_run = false);
/// The config of the student-alone baseline of a distillation config: the same stages (steps, epochs,
/// learning rates, hooks), seed and data, each stage's losses replaced by hard-label cross-entropy; out
/// OUT/baseline; the distilled run's teacher (scored, never run); no teacher cache or hard-example mining.
RunConfig baseline_config(const RunConfig& config);
/// Each test score of the distilled student minus the same score of the student alone, from two summaries.
nlohmann::json distillation_gain(const nlohmann::json& distilled, const nlohmann::json& alone);
/// Trains the teacher alone into OUT/teacher.pt (replacing one that is there) and reports its test metrics.
int run_teacher(RunConfig config, bool resume);
/// Test-set metrics of a saved model: OUT/<which>.pt by default, or `model_file`: a float state
/// written by distill/teacher, or an int8 file "*.int8.pt" written by distill with a QAT stage.
/// `which` is "student" or "teacher" (the architecture to load it into).
/// `as_json`: one JSON object on stdout instead of the text report.
int run_eval(const RunConfig& config, const std::string& which, const std::string& model_file, bool as_json);
/// Registered losses with their keys, tasks with their models and data sets.
/// `plugins`: the loss types --plugin files registered, with their file (shown beside them).
int run_list(const std::map<std::string, std::string>& plugins = {});

/// What `kd-train export` is asked for.
struct ExportArgs {
  std::string which = "student";  ///< "student" or "teacher": the config's architecture to load
  std::string model_file;         ///< the saved model (default OUT/<which>.pt)
  std::string format = "torchscript";  ///< "torchscript" or "int8"
  std::string to;                 ///< the file to write (default OUT/<which>.ts.pt or OUT/<which>.int8.pt)
  bool with_layers = false;       ///< TorchScript: forward returns (logits, hidden_states, attentions)
  int64_t calibration_batches = 32;  ///< int8 from a float model: training batches its observers see
  bool compact = false;           ///< TorchScript: remove pruned heads / feed-forward channels first (kd::prune::compact)
};
/// Writes OUT/<which>.pt (or `model_file`) as a TorchScript file, read back and compared with the C++
/// model on test inputs, or — students only — as an int8 file after post-training calibration on
/// training batches, scored on the test split next to the float model.
int run_export(const RunConfig& config, const ExportArgs& args);

}  // namespace kd::app
