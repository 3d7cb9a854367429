#pragma once
/// \file
/// Number formatting shared by the library's reports.

#include <cstdint>
#include <string>

namespace kd {

/// `n` with a comma between groups of three digits, as reports print counts and sizes.
///
/// Example: `kd::with_thousands(222350) == "222,350"`, `kd::with_thousands(-1234) == "-1,234"`.
std::string with_thousands(int64_t n);

}  // namespace kd
