#pragma once
// kd-train --plugin: shared libraries whose KD_REGISTER_LOSS lines add loss types to configs.
//
//   // my_losses.cpp, built as a shared library linked against kdistill (examples/plugin):
//   KD_REGISTER_LOSS("cosine_feature", [](const kd::LossSpec& s) { return CosineFeature(s.number("scale", 1.0)); },
//                    {"scale"}, "1 − cosine similarity of the last hidden states");
//
//   kd-train --plugin build/libmy_losses.so distill --config my.json     # "type": "cosine_feature" in a stage

#include <map>
#include <string>
#include <vector>

namespace kd::app {

/// Loads each file with dlopen; its static KD_REGISTER_LOSS registrations land in kd::LossRegistry::global().
/// Returns each new loss type with the plugin file that registered it. kd::Error (kFile) naming the file when it
/// does not exist or is not a loadable shared library (with the loader's reason), (kConfig) when it registers
/// no loss.
std::map<std::string, std::string> load_plugins(const std::vector<std::string>& files);

}  // namespace kd::app
