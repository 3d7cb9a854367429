#include "kd/core/enum_names.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd::detail {

void throw_unknown_enum_name(std::string_view what, std::string_view name, const std::vector<std::string>& names) {
  throw Error(ErrorCategory::kValue, fmt::format("{} '{}' is not one of {}", what, name, fmt::join(names, ", ")));
}

}  // namespace kd::detail
