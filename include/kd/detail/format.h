#pragma once
/// \file
/// Number formatting shared by the library's reports. Internal: not part of the API (kd/kd.h leaves it out).

#include <cstdint>
#include <string>

namespace kd::detail {

/// `n` with a comma between groups of three digits, as reports print counts and sizes.
///
/// Example: `with_thousands(222350) == "222,350"`, `with_thousands(-1234) == "-1,234"`.
std::string with_thousands(int64_t n);

}  // namespace kd::detail
