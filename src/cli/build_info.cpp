#include "build_info.h"

#include <torch/version.h>

#include <fmt/format.h>

namespace kd::app {

nlohmann::json build_info() {
  return {{"kdistill", KD_VERSION}, {"libtorch", TORCH_VERSION}, {"build_type", KD_BUILD_TYPE}, {"commit", KD_COMMIT}};
}

std::string version_text() {
  const auto b = build_info();
  return fmt::format("kd-train (kdistill {}) with LibTorch {}, {} build, commit {}", b["kdistill"].get<std::string>(),
                     b["libtorch"].get<std::string>(), b["build_type"].get<std::string>(), b["commit"].get<std::string>());
}

}  // namespace kd::app
