#pragma once
// What this kd-train is: kdistill's version, LibTorch's, the build type and the source commit.

#include <string>

#include <nlohmann/json.hpp>

namespace kd::app {

/// {"kdistill": "0.1.0", "libtorch": "1.13.0", "build_type": "Release", "commit": "3cbe1af" or "unknown"}; the
/// commit is the checkout's when CMake configured the build (unknown outside a git checkout).
nlohmann::json build_info();

/// build_info() as one line, for `kd-train --version`.
std::string version_text();

}  // namespace kd::app
