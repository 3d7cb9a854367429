#pragma once
/// \file
/// Which of a model's layers a list of names picks (LoRA targets, pruning targets).

#include <regex>
#include <string>
#include <vector>

namespace kd {

/// Matches module names against patterns: a plain pattern matches the name itself or its trailing
/// dotted parts ("q_proj" matches "blocks.0.attn.q_proj", not "blocks.0.attn.xq_proj"); "re:<regex>"
/// matches where the ECMAScript regex is found in the name. No patterns match every name.
///
/// kd::Error (kConfig) naming `who` and the pattern for an invalid regex.
///
/// Example:
/// ```
/// kd::NameMatcher m({"fc1", "re:attn\\.(q|v)_proj$"}, "LoRA");
/// m("blocks.1.fc1");   // true
/// ```
class NameMatcher {
 public:
  NameMatcher(const std::vector<std::string>& patterns, const std::string& who);
  bool empty() const { return plain_.empty() && regexes_.empty(); }
  bool operator()(const std::string& name) const;

 private:
  std::vector<std::string> plain_;
  std::vector<std::regex> regexes_;
};

}  // namespace kd
