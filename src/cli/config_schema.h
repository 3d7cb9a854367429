#pragma once
// `kd-train schema`: the JSON Schema of a task's config, and the key reference of docs/CONFIG.md, both
// made from what the validator reads (the task's defaults, config_keys, config_choices, the loss
// registry and the weighting policies), so that neither can drift from what kd-train accepts.

#include <string>

#include <nlohmann/json.hpp>

namespace kd::app {

/// The JSON Schema (draft-07) of one config layer of `task`: every key with its type, default, limits,
/// allowed values and meaning; no other key is allowed, and no key is required (a layer sets some keys
/// over the task's defaults). A stage object's keys, each registered loss type's option keys and each
/// weighting policy's keys are described too. Example: `kd-train schema --task spam > spam.schema.json`.
nlohmann::json config_schema(const std::string& task);

/// docs/CONFIG.md's key reference in Markdown: one table per section with every key of every task (type,
/// each task's default, allowed values, meaning), the stage keys, the loss types and the weighting policies.
std::string config_reference_markdown();

}  // namespace kd::app
