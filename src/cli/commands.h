#pragma once
// kd-train's subcommands, each given the resolved, validated config (see config.h).

#include <string>

#include <nlohmann/json.hpp>

namespace kd::app {

/// Teacher (trained or loaded), then the config's stages on the student; summary table and summary.json.
int run_distill(const nlohmann::json& config, bool resume);
/// Trains the teacher alone into OUT/teacher.pt (replacing one that is there) and reports its test metrics.
int run_teacher(const nlohmann::json& config, bool resume);
/// Test-set metrics of a saved model: OUT/<which>.pt by default, or `model_file`: a float state
/// written by distill/teacher, or an int8 file "*.int8.pt" written by distill with a QAT stage.
/// `which` is "student" or "teacher" (the architecture to load it into).
int run_eval(const nlohmann::json& config, const std::string& which, const std::string& model_file);
/// Registered losses with their keys, models, data sets.
int run_list();

}  // namespace kd::app
