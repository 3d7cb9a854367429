#pragma once
/// The names under which evaluations report their scores — EvalResult::metrics, metrics.jsonl,
/// TensorBoard's validation/<name>, kd-train's summary.json and evaluation.best_metric — with what each
/// is: its short heading, whether it is a share of [0, 1], and which way is better. Spelt here once.

#include <string>
#include <vector>

namespace kd::metric {

inline constexpr const char* kAccuracy = "accuracy";             ///< share of examples classed right
inline constexpr const char* kMacroF1 = "macro_f1";              ///< mean of the per-class F1 scores
inline constexpr const char* kNll = "nll";                       ///< mean negative log-likelihood per token, nats
inline constexpr const char* kPerplexity = "perplexity";         ///< exp(nll)
inline constexpr const char* kBitsPerByte = "bits_per_byte";     ///< nll / ln 2: bits per (byte) token
inline constexpr const char* kTokenAccuracy = "token_accuracy";  ///< share of next tokens predicted right

/// What a metric is.
struct Info {
  std::string name;
  std::string heading;            ///< as tables head it: "macro-F1", "bits/byte", "token acc"
  bool share = false;             ///< a value in [0, 1]: a difference of two is in points
  bool higher_is_better = true;
};

/// The known metrics, in the order a reader looks for them: classification, then language models.
/// Example: `for (const auto& m : kd::metric::known()) std::cout << m.heading << "\n";`
const std::vector<Info>& known();

/// The Info of `name`; a name the library does not know ("f1.3", a callback's own) is its own heading,
/// not a share, higher better.
/// Example: `kd::metric::info("bits_per_byte").higher_is_better == false`
Info info(const std::string& name);

/// The scores of a classifier's evaluation (accuracy, macro-F1) and of a language model's (bits per byte,
/// perplexity, token accuracy), the first being the headline.
const std::vector<std::string>& classification_scores();
const std::vector<std::string>& language_model_scores();

}  // namespace kd::metric
