#pragma once
// The top-level "lora" and "qat" objects of a kd-train config <-> the library's typed Options.
//
//   "lora": {"rank": 2, "alpha": 4, "rslora": false, "targets": ["fc1", "fc2"], "merge_at_end": true}
//   "qat":  {"per_channel": true, "narrow_range": true, "weight_observer": "moving_average",
//            "activations": true, "activation_observer": "moving_average", "averaging_constant": 0.01,
//            "exclude": ["^fc$"], "freeze_observers_at": 0.5}
//   "lora" also takes "dropout" (needs kd::nn::Linear layers, as kd-train's CNN students have).
//
// Stages switch them on with "hooks": ["lora"] (see stage_config.h).

#include <string>

#include <nlohmann/json.hpp>

#include "kd/adapters/lora.h"
#include "kd/adapters/lora_hook.h"
#include "kd/quant/qat.h"
#include "kd/quant/qat_hook.h"

namespace kd::app {

/// kd::lora::Options from the "lora" object (already type-checked against the
/// defaults); throws kd::Error (kConfig) naming the JSON path, e.g. "lora.targets[1]".
lora::Options lora_options_from_json(const nlohmann::json& lora, const std::string& origin);
lora::HookOptions lora_hook_options_from_json(const nlohmann::json& lora);

/// kd::qat::Options / HookOptions from the "qat" object; "qat.exclude[i]" must be strings (regexes).
qat::Options qat_options_from_json(const nlohmann::json& qat, const std::string& origin);
qat::HookOptions qat_hook_options_from_json(const nlohmann::json& qat);

}  // namespace kd::app
