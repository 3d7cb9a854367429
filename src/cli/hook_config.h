#pragma once
// The top-level "lora" and "qat" objects of a kd-train config <-> the library's typed Options.
//
//   "lora": {"rank": 2, "alpha": 4, "rslora": false, "targets": ["fc1", "fc2"], "merge_at_end": true}
//   "qat":  {"per_channel": true, "narrow_range": true, "weight_observer": "moving_average",
//            "activations": true, "activation_observer": "moving_average", "averaging_constant": 0.01,
//            "exclude": ["^fc$"], "freeze_observers_at": 0.5}
//   "lora" also takes "dropout" (needs kd::nn::Linear layers, as kd-train's CNN students have).
//
// Stages switch them on with "hooks": ["lora"] (see stage_config.h). A stage that lists "qat" may
// carry its own "qat" object (kd::qat::StageOptions), e.g. a calibration stage then a QAT stage:
//   {"name": "calibrate", "hooks": ["qat"], "qat": {"fake_quant": false, "freeze_observers_at": 1.0}, ...}
//   {"name": "qat",       "hooks": ["qat"], "qat": {"freeze_observers_at_step": 100}, ...}

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kd/adapters/lora.h"
#include "kd/adapters/lora_hook.h"
#include "kd/prune/pruning.h"
#include "kd/prune/pruning_hook.h"
#include "kd/quant/qat.h"
#include "kd/quant/qat_hook.h"

namespace kd::app {

/// kd::lora::Options from the "lora" object (already type-checked against the
/// defaults); throws kd::Error (kConfig) naming the JSON path, e.g. "lora.targets[1]".
lora::Options lora_options_from_json(const nlohmann::json& lora, const std::string& origin);
lora::HookOptions lora_hook_options_from_json(const nlohmann::json& lora);

/// kd::qat::Options from the "qat" object; "qat.exclude[i]" must be strings (regexes).
qat::Options qat_options_from_json(const nlohmann::json& qat, const std::string& origin);
/// kd::qat::HookOptions from the "qat" object plus the per-stage "qat" objects of `stages` (the
/// config's "stages" array), keyed by stage name.
qat::HookOptions qat_hook_options_from_json(const nlohmann::json& qat, const nlohmann::json& stages);

/// The keys a stage's "qat" object may have, with their meaning (for errors and --help).
const std::vector<std::string>& qat_stage_keys();
/// kd::qat::StageOptions from one stage's "qat" object at JSON path `path` (e.g. "stages[3].qat"):
/// "fake_quant" (bool), "observers" (bool), "freeze_observers_at" (number in [0, 1]),
/// "freeze_observers_at_step" (integer >= 0). Throws kd::Error (kConfig) naming `origin` and the path.
qat::StageOptions qat_stage_options_from_json(const nlohmann::json& stage_qat, const std::string& origin,
                                              const std::string& path);

/// kd::prune::Options from the "prune" object (granularity, targets, exclude).
prune::Options prune_options_from_json(const nlohmann::json& prune, const std::string& origin);
/// kd::prune::HookOptions from the "prune" object (start, end, update_every) plus the per-stage
/// "prune": {"start", "end"} objects of `stages`, keyed by stage name.
prune::HookOptions prune_hook_options_from_json(const nlohmann::json& prune, const nlohmann::json& stages);
/// One stage's "prune" object at JSON path `path`: {"start": s, "end": s}, each in [0, 1) (both optional;
/// missing ones come from the top-level "prune"). kd::Error (kConfig) naming `origin` and the path.
prune::StageSparsity prune_stage_from_json(const nlohmann::json& stage_prune, const std::string& origin,
                                           const std::string& path, prune::StageSparsity defaults = {});

}  // namespace kd::app
