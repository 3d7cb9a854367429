#pragma once
// What each key of a kd-train config means and which numbers it takes: one table that the validator
// (config.cpp, stage_config.cpp), `kd-train schema` and docs/CONFIG.md's key reference all read.
//
// Which keys a task has, their types and their defaults come from the task's defaults (config.h:
// task_defaults); the string choices from the enums' name tables (config.h: config_choices).

#include <map>
#include <optional>
#include <string>

namespace kd::app {

/// The numbers a numeric key takes: [lo, hi], or (lo, hi] when `lo_open`.
struct Range {
  double lo = 0, hi = 0;
  bool lo_open = false;
  bool contains(double x) const { return x >= lo && x <= hi && !(lo_open && x == lo); }
  /// "[0, 1]" or "(0, 10]".
  std::string to_string() const;
};

/// One key: what it does (a sentence for --help, the JSON Schema and docs/CONFIG.md) and, for numbers,
/// its limits.
struct KeyInfo {
  std::string meaning;
  std::optional<Range> range;
};

/// Every key by its dotted path ("train.lr", "teacher.cache.top_k"); the keys of each stage object as
/// "stages[].<key>" ("stages[].epochs"). A key of any task is here once, whichever tasks have it.
const std::map<std::string, KeyInfo>& config_keys();

/// config_keys().at(path).range, or nothing for a key without limits (or not in the table).
std::optional<Range> key_range(const std::string& path);

}  // namespace kd::app
