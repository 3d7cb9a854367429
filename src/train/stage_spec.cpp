#include "kd/train/stage_spec.h"

#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "kd/core/error.h"

namespace kd {

std::vector<Stage> build_stages(const std::vector<StageSpec>& specs, const LossRegistry& registry) {
  using Key = std::tuple<std::string, std::string, std::map<std::string, LossSpec::Value>>;
  std::map<Key, AnyLoss> made;  // shared across stages
  std::vector<Stage> stages;
  for (size_t i = 0; i < specs.size(); ++i) {
    const StageSpec& spec = specs[i];
    if (spec.name().empty()) throw Error(ErrorCategory::kConfig, fmt::format("stage {} has no name", i));
    const std::string where = fmt::format("stage '{}'", spec.name());
    if (spec.losses().empty()) {
      throw Error(ErrorCategory::kConfig, where + " has no loss terms; give at least one, e.g. temperature_kl");
    }
    std::vector<WeightedTerm> terms;
    std::set<std::string> names;
    for (const auto& term : spec.losses()) {
      if (!names.insert(term.term_name()).second) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("{}: two terms are named '{}'; give one of them another \"name\"", where,
                                term.term_name()));
      }
      const Key key{term.term_name(), term.type(), term.values()};
      auto it = made.find(key);
      if (it == made.end()) {
        try {
          it = made.emplace(key, registry.create(term)).first;
        } catch (const Error& e) {
          throw Error(e.category(), fmt::format("{}: {}", where, e.message()));
        }
      }
      terms.emplace_back(term.term_name(), it->second, term.weight());
    }
    WeightedSum sum(nullptr);
    try {  // the sum checks that the policy was built for this many terms
      sum = WeightedSum(std::move(terms), spec.weighting());
    } catch (const Error& e) {
      throw Error(e.category(), fmt::format("{}: {}", where, e.message()));
    }
    stages.push_back(Stage(spec.name(), torch::nn::AnyModule(sum))
                         .epochs(spec.epochs())
                         .steps(spec.steps())
                         .lr(spec.lr())
                         .loss_lr(spec.loss_lr())
                         .trainable(spec.trainable())
                         .eval_every(spec.eval_every())
                         .param_groups(spec.param_groups())
                         .ema(spec.ema())
                         .hooks(spec.hooks()));
  }
  return stages;
}

}  // namespace kd
