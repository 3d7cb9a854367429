#include "kd/losses/layer_pair.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"

namespace kd {

int64_t resolve_layer_index(int64_t index, size_t count, const std::string& loss, size_t pair,
                            const std::string& side, const std::string& what) {
  const auto n = static_cast<int64_t>(count);
  const int64_t resolved = index < 0 ? index + n : index;
  if (resolved < 0 || resolved >= n) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{} pair {}: {} layer index {} is out of range for the {} {} {} (valid: {}..{}); "
                            "fix the pair or make the {} model expose more layers",
                            loss, pair, side, index, n, side, what, n == 0 ? 0 : -n, n - 1, side));
  }
  return resolved;
}

std::optional<int64_t> resolve_student_layer(int64_t index, size_t ran, int64_t skipped, const std::string& loss,
                                             size_t pair, const std::string& what, bool& said) {
  const size_t depth = ran + static_cast<size_t>(skipped);
  const int64_t resolved = resolve_layer_index(index, depth, loss, pair, "student", what);
  if (resolved < static_cast<int64_t>(ran)) return resolved;
  if (!said) {
    spdlog::info("{} pair {}: student layer {} did not run for a batch (dynamic depth: {} of {} layers); such "
                 "batches skip the pair",
                 loss, pair, index, ran, depth);
    said = true;
  }
  return std::nullopt;
}

}  // namespace kd
