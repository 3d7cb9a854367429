#pragma once
// The "stages" array of a kd-train config <-> kd::StageSpec.
//
//   "stages": [
//     {"name": "logits", "epochs": 2, "lr": 0.001,
//      "losses": [{"type": "temperature_kl", "name": "kl", "weight": 0.8, "temperature": 3},
//                 {"type": "hard_label_ce", "name": "ce", "weight": {"schedule": "linear", "start": 0.2, "end": 0}}]}
//   ]
//
// A loss term: "type" (a registered loss, see `kd-train list`), optional "name"
// and "weight" (a number, or {"schedule": "linear"|"cosine", "start", "end"}
// over the stage's progress); every other key is that loss's option.
// A stage may list "hooks": ["lora"] or ["qat"], switched on for that stage and
// configured by the config's top-level "lora" / "qat" objects; a stage that lists "qat"
// may add its own "qat" object (per-stage QAT settings, see hook_config.h), and a stage may weigh its terms
// with a learned policy: "weighting": {"policy": "uncertainty"} (see weighting_config.h).

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kd/train/stage_spec.h"
#include "run_config.h"

namespace kd::app {

/// The keys a stage object may have, with their defaults (the schema).
const nlohmann::json& stage_defaults();

/// Parses and validates `stages` (a JSON array): every key, type and range, every loss term by building it
/// with the global kd::LossRegistry, each stage's hook names and weighting, and what spans stages (term names).
/// Each StageConfig's spec has no hooks or weighting policy yet (they need the student), and its fingerprint
/// is left to parse_run_config. Throws kd::Error (kConfig) naming `origin` and the JSON path, e.g.
/// "stages[2].losses[0].temperature".
std::vector<StageConfig> stage_configs_from_json(const nlohmann::json& stages, const std::string& origin);
/// The specs of stage_configs_from_json.
std::vector<StageSpec> stages_from_json(const nlohmann::json& stages, const std::string& origin);

/// The hook names a stage may list in "hooks" ("lora", "qat").
const std::vector<std::string>& known_hooks();

/// The validated "hooks" list of one stage object (at JSON path `path`, e.g. "stages[2]").
std::vector<std::string> stage_hook_names(const nlohmann::json& stage, const std::string& origin, const std::string& path);

/// The inverse, for defaults and the saved config.
nlohmann::json stages_to_json(const std::vector<StageSpec>& stages);

}  // namespace kd::app
