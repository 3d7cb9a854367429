#pragma once
// kd-train's configuration tree: defaults < --config files (in order) < --set overrides.
//
// The library itself never sees JSON: the app validates the tree here, then
// turns it into typed Options (see kd_train.cpp).

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kd::app {

/// Throws kd::Error (kConfig) "<origin>: '<path>' <problem>", the form of every refused config value, e.g.
/// `config_error("config", "stages[1].weighting.lr", "must be a number in (0, 100], got -1")`.
[[noreturn]] void config_error(const std::string& origin, const std::string& path, const std::string& problem);

/// The JSON Schema type of a config value: "boolean", "integer", "number", "string", "array", "object" or "null"
/// (a number written as an integer is "integer", any other "number"; the validator also takes 2.0 for an
/// integer key, as JSON Schema's "integer" does).
std::string json_type_name(const nlohmann::json& v);

/// The sections every task's default config shares (teacher cache and ensemble, evaluation, lora, qat, prune,
/// train); each Task's defaults() adds its own data, teacher, student and stages to them.
nlohmann::json shared_config_defaults();

/// The default configuration of `kd-train distill` for `task` ("fashion_mnist", "spam", "byte_lm", "custom"; see
/// task.h); it doubles as that task's schema: every allowed key appears here, with the type its value
/// must have. Task::defaults() of the task, built once. kd::Error (kConfig) for an unknown task, naming the
/// ones there are.
const nlohmann::json& task_defaults(const std::string& task);

/// The string keys of `task`'s config with a fixed set of values, by dotted path, and those values (from
/// the enums' name tables; "student.model" lists the task's student architectures, Task::student_models).
std::map<std::string, std::vector<std::string>> config_choices(const std::string& task);

/// task_defaults("fashion_mnist"): what `kd-train distill` runs with no config.
const nlohmann::json& distill_defaults();

/// The task a config layer names ("task" key), or "" when it names none; kd::Error (kConfig) naming
/// `origin` when the value is not a task.
std::string task_named_in(const nlohmann::json& layer, const std::string& origin);

/// Layers `files` (JSON objects, later ones win) and `overrides`
/// ("a.b.c=value", value parsed as JSON when it parses, else as a string)
/// over the defaults of the task they name (the last "task" of the files, or a --set task=...;
/// fashion_mnist when none does), then validates the result. Throws kd::Error (kConfig
/// or kFile) naming the file, the JSON path, the bad value and what is allowed,
/// with a close-match suggestion for misspelt keys.
nlohmann::json resolve_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides);

/// Parses one config layer (a --config file's text) and validates it on its own against the schema
/// of the task it names (fashion_mnist if none); `origin` names it in messages. Throws kd::Error (kConfig) for text that is not JSON or not a valid layer.
nlohmann::json parse_config_text(const std::string& text, const std::string& origin);

/// Checks `config` against the schema of its task (task_defaults(config["task"])) and the value ranges.
/// `origin` names where the values came from, for messages.
void validate_config(const nlohmann::json& config, const std::string& origin);

}  // namespace kd::app
