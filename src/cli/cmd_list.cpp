// kd-train list: what a config may name.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.h"
#include "kd/kd.h"

namespace kd::app {

int run_list() {
  const auto& registry = kd::LossRegistry::global();
  fmt::print("losses (a stage's \"losses\": [{{\"type\": ..., \"weight\": ..., options}}]):\n");
  for (const auto& name : registry.names()) {
    fmt::print("  {:<20} {}\n", name, registry.description(name));
    if (!registry.keys(name).empty()) fmt::print("  {:<20} options: {}\n", "", fmt::join(registry.keys(name), ", "));
  }
  fmt::print("\nmodels:\n");
  fmt::print("  {:<20} {}\n", "CnnTeacher", "kd::models::CnnTeacher: 4 conv + 2 linear, 871 018 parameters (the teacher)");
  fmt::print("  {:<20} {}\n", "DepthwiseCnnStudent",
             "kd::models::DepthwiseCnnStudent: depthwise-separable, 16 650 parameters (the student)");
  fmt::print("\ndata sets:\n");
  fmt::print("  {:<20} {}\n", "fashion_mnist",
             "Fashion-MNIST IDX .gz files (Debian package dataset-fashion-mnist; data.root)");
  return 0;
}

}  // namespace kd::app
