#include "kd/core/name_matcher.h"

#include <algorithm>

#include <fmt/format.h>

#include "kd/core/error.h"

namespace kd {

NameMatcher::NameMatcher(const std::vector<std::string>& patterns, const std::string& who) {
  for (const auto& t : patterns) {
    if (t.rfind("re:", 0) == 0) {
      try {
        regexes_.emplace_back(t.substr(3), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        throw Error(ErrorCategory::kConfig, fmt::format("{}: target '{}' is not a valid regex: {}", who, t, e.what()));
      }
    } else {
      plain_.push_back(t);
    }
  }
}

bool NameMatcher::operator()(const std::string& name) const {
  if (empty()) return true;
  for (const auto& t : plain_) {
    if (name == t) return true;
    if (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
        name[name.size() - t.size() - 1] == '.') {
      return true;
    }
  }
  return std::any_of(regexes_.begin(), regexes_.end(), [&](const std::regex& re) { return std::regex_search(name, re); });
}

}  // namespace kd
