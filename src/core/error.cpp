#include "kd/core/error.h"

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
  }
  return "unknown";
}

Error::Error(ErrorCategory category, const std::string& message)
    : std::runtime_error(std::string(to_string(category)) + " error: " + message),
      category_(category) {}

}  // namespace kd
