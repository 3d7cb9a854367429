#pragma once
/// \file
/// The one exception type kdistill throws at its users.

#include <stdexcept>
#include <string>
#include <vector>

namespace kd {

/// What went wrong, so callers (and the CLI's exit code) can react by kind.
enum class ErrorCategory {
  kFile,      ///< a file is missing, unreadable or unwritable
  kFormat,    ///< a file exists but its contents are not what was expected
  kModel,     ///< a model's output lacks what was asked of it
  kShape,     ///< two tensors that must agree do not
  kValue,     ///< an argument or option is out of range, or a value is non-finite
  kConfig,    ///< a configuration key, type or value is wrong
  kDevice,    ///< the requested device is not available
  kState,     ///< an operation was called in the wrong state
  kDistributed,  ///< the rendezvous, another rank or a collective operation failed (kd::dist)
};

/// Human-readable name of a category ("file", "shape", ...).
const char* to_string(ErrorCategory category);

/// Every error kdistill raises on bad input. The message names the thing at
/// fault (a file, a key, both shapes) and what to do about it.
///
/// Example:
/// ```
/// try { auto t = kd::TeacherImpl::load("teacher.ts.pt"); }
/// catch (const kd::Error& e) { if (e.category() == kd::ErrorCategory::kFile) ...; }
/// ```
class Error : public std::runtime_error {
 public:
  Error(ErrorCategory category, const std::string& message);
  ErrorCategory category() const noexcept { return category_; }
  /// The message without the "<category> error: " prefix of what(), for
  /// re-throwing with added context: `throw kd::Error(e.category(), "loss 'kl': " + e.message());`
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorCategory category_;
  std::string message_;
};

/// The name in `candidates` closest to `name` by Levenshtein distance, if within
/// max(2, |name|/3) edits; "" otherwise. Used for "did you mean" hints.
///
/// Example: `kd::closest_name("hard_label", {"hard_label_ce", "temperature_kl"}) == "hard_label_ce"`
std::string closest_name(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace kd
