#include "plugins.h"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"
#include "kd/losses/registry.h"

namespace kd::app {

std::map<std::string, std::string> load_plugins(const std::vector<std::string>& files) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> added;
  auto& registry = LossRegistry::global();
  // A refusal of the program's own registrations (a name taken twice) ends it here, before any plugin.
  if (const auto errors = registry.take_static_errors(); !errors.empty()) {
    throw Error(ErrorCategory::kConfig, fmt::format("a loss registration was refused: {}", fmt::join(errors, "; ")));
  }
  std::set<std::string> loaded;
  for (const auto& file : files) {
    if (!fs::is_regular_file(file)) {
      throw Error(ErrorCategory::kFile,
                  fmt::format("--plugin '{}' does not exist; give the path of a shared library (.so) that registers "
                              "losses with KD_REGISTER_LOSS",
                              file));
    }
    const auto before = registry.names();
    // A path, not a bare name: dlopen would otherwise search the library path instead of the file given.
    const std::string path = fs::canonical(file).string();
    if (!loaded.insert(path).second) continue;  // the same library named twice: loaded once
    // Kept loaded for the life of the process: the losses it registered run code from it. RTLD_GLOBAL lets a
    // plugin's own dependencies resolve against the libkdistill already loaded, so there is one registry.
    if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
      const char* why = dlerror();
      throw Error(ErrorCategory::kFile,
                  fmt::format("--plugin '{}' cannot be loaded: {} (build it as a shared library linked against this "
                              "kdistill's libkdistill)",
                              file, why ? why : "unknown reason"));
    }
    if (const auto errors = registry.take_static_errors(); !errors.empty()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("--plugin '{}': {} (rename the plugin's loss: a built-in loss or another plugin has "
                              "that name; `kd-train list` shows the names taken)",
                              file, fmt::join(errors, "; ")));
    }
    std::vector<std::string> mine;
    for (const auto& name : registry.names()) {
      if (std::find(before.begin(), before.end(), name) == before.end() && !added.count(name)) {
        added[name] = file;
        mine.push_back(name);
      }
    }
    if (mine.empty()) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("--plugin '{}' registered no loss: a plugin defines its losses with KD_REGISTER_LOSS(...) "
                              "at namespace scope and links libkdistill as a shared library (not a static copy, whose "
                              "registry kd-train does not see)",
                              file));
    }
    spdlog::debug("plugin {}: {}", file, fmt::join(mine, ", "));
  }
  return added;
}

}  // namespace kd::app
