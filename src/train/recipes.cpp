#include "kd/train/recipes.h"

#include <fmt/format.h>

#include "kd/core/error.h"

namespace kd {
namespace {

std::vector<double> as_numbers(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

}  // namespace

std::vector<StageSpec> progressive3(const Progressive3Options& o) {
  if (o.epochs().size() != 3) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("progressive3: epochs needs one entry per stage (3), got {}", o.epochs().size()));
  }
  for (const auto& [name, w] : {std::pair<const char*, double>{"feature_weight", o.feature_weight()},
                                {"attention_weight", o.attention_weight()},
                                {"kl_weight", o.kl_weight()},
                                {"ce_weight", o.ce_weight()}}) {
    if (!(w >= 0)) throw Error(ErrorCategory::kConfig, fmt::format("progressive3: {} must be >= 0, got {}", name, w));
  }
  const auto feat = LossSpec("feature_l2")
                        .name("feat")
                        .weight(o.feature_weight())
                        .set("teacher_layers", as_numbers(o.teacher_layers()))
                        .set("student_layers", as_numbers(o.student_layers()))
                        .set("student_dims", as_numbers(o.student_dims()))
                        .set("teacher_dims", as_numbers(o.teacher_dims()));
  const auto attn = LossSpec("attention_mse")
                        .name("attn")
                        .weight(o.attention_weight())
                        .set("teacher_layers", as_numbers(o.attention_teacher_layers()))
                        .set("student_layers", as_numbers(o.attention_student_layers()));
  std::vector<LossSpec> logits = {feat, attn,
                                  LossSpec("temperature_kl").name("kl").weight(o.kl_weight()).set("temperature",
                                                                                                  o.temperature())};
  if (o.ce_weight() > 0) logits.push_back(LossSpec("hard_label_ce").name("ce").weight(o.ce_weight()));
  return {StageSpec("features").losses({feat}).epochs(o.epochs()[0]).lr(o.lr()),
          StageSpec("attention").losses({feat, attn}).epochs(o.epochs()[1]).lr(o.lr()),
          StageSpec("logits").losses(logits).epochs(o.epochs()[2]).lr(o.lr())};
}

}  // namespace kd
