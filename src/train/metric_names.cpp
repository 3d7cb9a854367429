#include "kd/train/metric_names.h"

#include <algorithm>

namespace kd::metric {

const std::vector<Info>& known() {
  static const std::vector<Info> metrics = {
      {kAccuracy, "accuracy", true, true},       {kMacroF1, "macro-F1", true, true},
      {kNll, "nll", false, false},               {kPerplexity, "perplexity", false, false},
      {kBitsPerByte, "bits/byte", false, false}, {kTokenAccuracy, "token acc", true, true},
  };
  return metrics;
}

Info info(const std::string& name) {
  const auto& all = known();
  const auto it = std::find_if(all.begin(), all.end(), [&](const Info& m) { return m.name == name; });
  return it != all.end() ? *it : Info{name, name, false, true};
}

const std::vector<std::string>& classification_scores() {
  static const std::vector<std::string> names = {kAccuracy, kMacroF1};
  return names;
}

const std::vector<std::string>& language_model_scores() {
  static const std::vector<std::string> names = {kBitsPerByte, kPerplexity, kTokenAccuracy};
  return names;
}

}  // namespace kd::metric
