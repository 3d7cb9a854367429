#include "kd/core/error.h"

#include <algorithm>
#include <limits>

namespace kd {

const char* to_string(ErrorCategory category) {
  switch (category) {
    case ErrorCategory::kFile: return "file";
    case ErrorCategory::kFormat: return "format";
    case ErrorCategory::kModel: return "model";
    case ErrorCategory::kShape: return "shape";
    case ErrorCategory::kValue: return "value";
    case ErrorCategory::kConfig: return "config";
    case ErrorCategory::kDevice: return "device";
    case ErrorCategory::kState: return "state";
    case ErrorCategory::kDistributed: return "distributed";
  }
  return "unknown";
}

Error::Error(ErrorCategory category, const std::string& message)
    : std::runtime_error(std::string(to_string(category)) + " error: " + message),
      category_(category),
      message_(message) {}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string closest_name(const std::string& name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = edit_distance(name, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best_d <= std::max<size_t>(2, name.size() / 3) ? best : std::string();
}

}  // namespace kd
