#pragma once
/// \file
/// The names an enum's values go by in configs, logs and reports: one table kept beside each enum and read by
/// every parser and writer, so that a name is spelt once.

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kd {

namespace detail {
/// Throws kd::Error (kValue): "<what> '<name>' is not one of <names, comma-separated>".
[[noreturn]] void throw_unknown_enum_name(std::string_view what, std::string_view name,
                                          const std::vector<std::string>& names);
}  // namespace detail

/// One value of an enum and its name.
template <typename E>
struct EnumName {
  E value;
  const char* name;
};

/// The table of an enum's names, declared beside the enum:
/// ```
/// enum class Color { kRed, kGreen };
/// inline constexpr EnumNames<Color, 2> kColorNames{{{{Color::kRed, "red"}, {Color::kGreen, "green"}}}};
/// kColorNames.name(Color::kGreen);   // "green"
/// kColorNames.parse("red");          // Color::kRed
/// kColorNames.parse("blue");         // std::nullopt
/// kColorNames.at("blue", "paint");   // throws kd::Error: paint 'blue' is not one of red, green
/// kColorNames.names();               // {"red", "green"}
/// ```
template <typename E, std::size_t N>
struct EnumNames {
  std::array<EnumName<E>, N> entries;

  /// The name of `value`; "?" for a value the table lacks (a cast integer).
  constexpr const char* name(E value) const {
    for (const auto& e : entries) {
      if (e.value == value) return e.name;
    }
    return "?";
  }
  /// The value called `name`, exactly as spelt; nullopt when none is.
  std::optional<E> parse(std::string_view name) const {
    for (const auto& e : entries) {
      if (name == e.name) return e.value;
    }
    return std::nullopt;
  }
  /// The value called `name`; kd::Error (kValue) naming `what`, the name and the choices when none is.
  E at(std::string_view name, std::string_view what) const {
    if (const auto v = parse(name)) return *v;
    detail::throw_unknown_enum_name(what, name, names());
  }
  /// Every name, in the table's order (configs list them as the choices).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(N);
    for (const auto& e : entries) out.emplace_back(e.name);
    return out;
  }
};

}  // namespace kd
