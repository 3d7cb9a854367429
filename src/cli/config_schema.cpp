#include "config_schema.h"

#include <algorithm>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"
#include "kd/losses/registry.h"
#include "kd/losses/schedule.h"
#include "config.h"
#include "config_keys.h"
#include "stage_config.h"
#include "task.h"
#include "weighting_config.h"

namespace kd::app {
namespace {

using json = nlohmann::json;

// Allowed values by dotted path (config_choices of one task).
using Choices = std::map<std::string, std::vector<std::string>>;

const KeyInfo& info_of(const std::string& path) {
  const auto it = config_keys().find(path);
  if (it == config_keys().end()) {
    throw Error(ErrorCategory::kState,
                fmt::format("config key '{}' has no entry in config_keys(); add its meaning there", path));
  }
  return it->second;
}

// Integer keys get integer bounds (a schema reader sees 1, not 1.0).
void add_range(json& s, const std::optional<Range>& r) {
  if (!r) return;
  const bool integral = s.value("type", "") == "integer";
  const auto bound = [&](double x) { return integral ? json(static_cast<int64_t>(x)) : json(x); };
  (r->lo_open ? s["exclusiveMinimum"] : s["minimum"]) = bound(r->lo);
  s["maximum"] = bound(r->hi);
}

json leaf_schema(const std::string& path, const json& def, const Choices& choices) {
  const KeyInfo& info = info_of(path);
  json s = {{"type", json_type_name(def)}, {"default", def}, {"description", info.meaning}};
  if (def.is_array() && !def.empty()) s["items"] = {{"type", json_type_name(def.front())}};
  if (const auto c = choices.find(path); c != choices.end()) s["enum"] = c->second;
  add_range(s, info.range);
  return s;
}

json object_schema(const std::string& path, const json& defaults,
                   const Choices& choices);

json stage_schema();

json key_schema(const std::string& path, const json& def, const Choices& choices) {
  if (path == "stages") {
    return {{"type", "array"}, {"minItems", 1}, {"description", info_of(path).meaning}, {"items", stage_schema()}};
  }
  if (def.is_object()) return object_schema(path, def, choices);
  return leaf_schema(path, def, choices);
}

json object_schema(const std::string& path, const json& defaults,
                   const Choices& choices) {
  json properties = json::object();
  for (const auto& [key, def] : defaults.items()) {
    properties[key] = key_schema(path.empty() ? key : path + "." + key, def, choices);
  }
  json s = {{"type", "object"}, {"properties", properties}, {"additionalProperties", false}};
  if (!path.empty()) s["description"] = info_of(path).meaning;
  return s;
}

// {"if": <discriminator> is `name`, "then": only `keys` (and `common`) allowed}. `is_default`: an object
// without the discriminator counts as `name` too.
json only_keys_when(const std::string& discriminator, const std::string& name, const std::vector<std::string>& keys,
                    const std::vector<std::string>& common, bool is_default = false) {
  json properties = json::object();
  for (const auto& k : common) properties[k] = json::object();
  for (const auto& k : keys) properties[k] = json::object();
  json when = {{"properties", {{discriminator, {{"const", name}}}}}};
  if (!is_default) when["required"] = {discriminator};
  return {{"if", when}, {"then", {{"properties", properties}, {"additionalProperties", false}}}};
}

json loss_term_schema() {
  const auto& registry = LossRegistry::global();
  const auto types = registry.names();
  const json schedule = {{"type", "object"},
                         {"properties",
                          {{"schedule", {{"enum", kRampKindNames.names()}}},
                           {"start", {{"type", "number"}}},
                           {"end", {{"type", "number"}}}}},
                         {"required", {"schedule", "start", "end"}},
                         {"additionalProperties", false}};
  json s = {{"type", "object"},
            {"required", {"type"}},
            {"properties",
             {{"type", {{"type", "string"}, {"enum", types}, {"description", "the registered loss type"}}},
              {"name", {{"type", "string"}, {"description", "the term's name in logs (default: its type)"}}},
              {"weight",
               {{"description", "the term's weight: a number, or a schedule over the stage's progress"},
                {"anyOf", {{{"type", "number"}}, schedule}}}}}}};
  json all_of = json::array();
  for (const auto& type : types) {
    if (!registry.keys(type).empty()) {
      all_of.push_back(only_keys_when("type", type, registry.keys(type), {"type", "name", "weight"}));
    }
  }
  s["allOf"] = all_of;
  return s;
}

json weighting_schema() {
  std::vector<std::string> names;
  json all_of = json::array();
  for (const auto& p : weighting_policy_names()) {
    names.push_back(p.name);
    std::vector<std::string> keys;
    const json defaults = weighting_defaults(p.kind);  // items() of a temporary would dangle
    for (const auto& [k, _] : defaults.items()) keys.push_back(k);
    all_of.push_back(only_keys_when("policy", p.name, keys, {}, p.kind == WeightingPolicyKind::kFixed));
  }
  return {{"type", "object"},
          {"description", info_of("stages[].weighting").meaning},
          {"properties",
           {{"policy",
             {{"type", "string"}, {"enum", names}, {"default", "fixed"}, {"description", "the weighting policy"}}}}},
          {"allOf", all_of}};
}

json stage_schema() {
  json properties = json::object();
  for (const auto& [key, def] : stage_defaults().items()) {
    const std::string path = "stages[]." + key;
    json s;
    if (key == "losses") {
      s = {{"type", "array"}, {"minItems", 1}, {"items", loss_term_schema()}};
    } else if (key == "weighting") {
      s = weighting_schema();
    } else {
      s = {{"type", json_type_name(def)}, {"default", def}};
      if (key == "hooks") s["items"] = {{"enum", {"lora", "qat", "prune"}}};
      if (key == "trainable") s["items"] = {{"type", "string"}};
    }
    s["description"] = info_of(path).meaning;
    if (key == "loss_lr") {  // (0, 10], or -1 for "the stage's lr"
      json in_range = json::object();
      add_range(in_range, info_of(path).range);
      s["anyOf"] = {{{"const", -1}}, in_range};
    } else if (key == "name") {
      s["minLength"] = 1;
    } else {
      add_range(s, info_of(path).range);
    }
    properties[key] = s;
  }
  return {{"type", "object"}, {"properties", properties}, {"required", {"name", "losses"}}, {"additionalProperties", false}};
}

// ---- Markdown ----

std::string cell(std::string text) {
  std::string out;
  for (char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

std::string code(const json& v) { return "`" + cell(v.dump()) + "`"; }

// "`128`" when every task that has the key agrees, else "fashion_mnist: `128`; spam, byte_lm: `32`".
std::string defaults_cell(const std::vector<std::pair<std::string, json>>& by_task, size_t all_tasks) {
  std::vector<std::pair<json, std::vector<std::string>>> groups;
  for (const auto& entry : by_task) {  // not a structured binding: a lambda cannot capture one in C++17
    const auto& [task, v] = entry;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == entry.second; });
    if (it == groups.end()) groups.push_back({v, {task}});
    else it->second.push_back(task);
  }
  if (groups.size() == 1 && by_task.size() == all_tasks) return code(groups.front().first);
  std::vector<std::string> parts;
  for (const auto& [v, tasks] : groups) parts.push_back(fmt::format("{}: {}", fmt::join(tasks, ", "), code(v)));
  return fmt::format("{}", fmt::join(parts, "; "));
}

// `choices`: config_choices of each task, by task.
std::string allowed_cell(const std::string& path, const std::vector<std::string>& tasks,
                         const std::map<std::string, Choices>& choices) {
  std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> groups;  // (values, tasks)
  for (const auto& task : tasks) {
    const Choices& c = choices.at(task);
    const auto it = c.find(path);
    if (it == c.end()) continue;
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == it->second; });
    if (g == groups.end()) groups.push_back({it->second, {task}});
    else g->second.push_back(task);
  }
  const auto quoted = [](const std::vector<std::string>& values) {
    std::vector<std::string> q;
    for (const auto& v : values) q.push_back(code(json(v)));
    return fmt::format("{}", fmt::join(q, ", "));
  };
  if (groups.size() == 1) return quoted(groups.front().first);
  if (!groups.empty()) {
    std::vector<std::string> parts;
    for (const auto& [values, ts] : groups) parts.push_back(fmt::format("{}: {}", fmt::join(ts, ", "), quoted(values)));
    return fmt::format("{}", fmt::join(parts, "; "));
  }
  const auto r = key_range(path);
  return r ? r->to_string() : "";
}

std::string type_cell(const json& v) {
  if (v.is_array() && !v.empty()) return "array of " + json_type_name(v.front());
  return json_type_name(v);
}

// Each leaf of a task's defaults by dotted path (objects walked; "stages" kept whole).
void leaves(const json& node, const std::string& path, std::map<std::string, json>& out) {
  for (const auto& [key, v] : node.items()) {
    const std::string here = path.empty() ? key : path + "." + key;
    if (v.is_object() && here != "stages") leaves(v, here, out);
    else out[here] = v;
  }
}

std::string section_of(const std::string& path) {
  const auto dot = path.find('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}

std::string key_tables() {
  const auto tasks = task_names();
  std::map<std::string, std::map<std::string, json>> by_task;  // task -> path -> default
  std::map<std::string, Choices> choices;
  std::vector<std::string> paths;
  for (const auto& t : tasks) {
    choices[t] = config_choices(t);
    leaves(task_defaults(t), "", by_task[t]);
    for (const auto& [p, _] : by_task[t]) {
      if (std::find(paths.begin(), paths.end(), p) == paths.end()) paths.push_back(p);
    }
  }
  std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
    return std::make_pair(section_of(a), a) < std::make_pair(section_of(b), b);
  });
  std::string out, section = "-";
  for (const auto& p : paths) {
    if (section_of(p) != section) {
      section = section_of(p);
      out += fmt::format("\n### {}\n\n| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n",
                         section.empty() ? "Top level" : "`" + section + "`");
    }
    std::vector<std::pair<std::string, json>> defaults;
    std::vector<std::string> has;
    for (const auto& t : tasks) {
      const auto it = by_task[t].find(p);
      if (it == by_task[t].end()) continue;
      defaults.emplace_back(t, it->second);
      has.push_back(t);
    }
    // The stages are the task's whole recipe, and "task" defaults to the first task when no layer names one.
    const std::string default_value = p == "stages" ? "the task's recipe (`--print-config` shows it)"
                                      : p == "task" ? code(json(tasks.front()))
                                                    : defaults_cell(defaults, tasks.size());
    out += fmt::format("| `{}` | {} | {} | {} | {} |\n", p, p == "stages" ? "array" : type_cell(defaults.front().second),
                       default_value, allowed_cell(p, has, choices), cell(info_of(p).meaning));
  }
  return out;
}

std::string stage_table() {
  std::string out =
      "\n### A stage (`stages[i]`)\n\n| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
  for (const auto& [key, def] : stage_defaults().items()) {
    const std::string path = "stages[]." + key;
    const auto r = key_range(path);
    std::string allowed = r ? r->to_string() : "";
    if (key == "loss_lr") allowed += " or -1";
    if (key == "name" || key == "losses") allowed = "required";
    out += fmt::format("| `{}` | {} | {} | {} | {} |\n", key, json_type_name(def), key == "losses" ? "" : code(def),
                       allowed, cell(info_of(path).meaning));
  }
  return out;
}

std::string loss_table() {
  const auto& registry = LossRegistry::global();
  std::string out =
      "\n### Loss types (a stage's `losses[j].type`)\n\nEvery term also takes `name` and `weight`.\n\n"
      "| type | options | what it computes |\n|---|---|---|\n";
  for (const auto& type : registry.names()) {
    std::vector<std::string> keys;
    for (const auto& k : registry.keys(type)) keys.push_back("`" + k + "`");
    out += fmt::format("| `{}` | {} | {} |\n", type, fmt::join(keys, ", "), cell(registry.description(type)));
  }
  return out;
}

std::string weighting_table() {
  std::string out =
      "\n### Weighting policies (a stage's `weighting.policy`)\n\n| policy | options (defaults) | what it does |\n"
      "|---|---|---|\n";
  for (const auto& p : weighting_policy_names()) {
    std::vector<std::string> keys;
    const json defaults = weighting_defaults(p.kind);
    for (const auto& [k, v] : defaults.items()) {
      if (k != "policy") keys.push_back(fmt::format("`{}` {}", k, code(v)));
    }
    out += fmt::format("| `{}` | {} | {} |\n", p.name, fmt::join(keys, ", "), cell(p.description));
  }
  return out;
}

}  // namespace

nlohmann::json config_schema(const std::string& task) {
  const json& defaults = task_defaults(task);  // kd::Error naming the tasks for an unknown one
  json schema = object_schema("", defaults, config_choices(task));
  schema["$schema"] = "http://json-schema.org/draft-07/schema#";
  schema["title"] = fmt::format("kd-train config, task {}", task);
  schema["description"] = fmt::format(
      "One config layer of task {}: every key is optional and overrides the task's default; a layer's \"stages\" "
      "replaces the whole list.",
      task);
  return schema;
}

std::string config_reference_markdown() {
  return "Every key a config may set, with each task's default (`kd-train schema --task T` prints the same as a "
         "JSON Schema).\n" +
         key_tables() + stage_table() + loss_table() + weighting_table();
}

}  // namespace kd::app
