// WeightedSum: totals and parts against closed forms, gradients, submodules, schedules, errors, cloning.
#include <cmath>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/temperature_kl.h"
#include "kd/losses/weighted_sum.h"
#include "kd/losses/weighting/uncertainty.h"
#include "reference.h"

namespace {

using ::testing::HasSubstr;

// L = c · mean(z²) over the student's logits; parts {"sq": L, "half": L/2}; `c` is a learnable parameter.
struct MeanSquareImpl : torch::nn::Cloneable<MeanSquareImpl> {
  explicit MeanSquareImpl(double c0 = 1.0) : c0(c0) { reset(); }
  void reset() override { c = register_parameter("c", torch::full({}, c0, torch::kFloat64)); }
  kd::LossResult forward(const kd::DistillBatch& b) {
    kd::LossResult r;
    r.total = c * b.student.logits.pow(2).mean();
    r.parts["sq"] = r.total.detach();
    r.parts["half"] = r.total.detach() / 2;
    return r;
  }
  double c0;
  torch::Tensor c;
};
TORCH_MODULE(MeanSquare);

// L = Σ(z − z_t); a plain Module (not Cloneable), used through AnyModule; declares needs_input_grad.
struct SumDiff : torch::nn::Module, kd::NeedsInputGrad {
  kd::LossResult forward(const kd::DistillBatch& b) {
    kd::LossResult r;
    r.total = (b.student.logits - b.teacher.logits).sum();
    r.parts["diff"] = r.total.detach();
    return r;
  }
  bool needs_input_grad() const override { return flag; }
  bool flag = true;
};

// Returns a fixed (possibly bad) total.
struct Fixed : torch::nn::Module {
  explicit Fixed(torch::Tensor t) : t(std::move(t)) {}
  kd::LossResult forward(const kd::DistillBatch&) { return {t, {}}; }
  torch::Tensor t;
};

kd::DistillBatch logits_batch() {
  kd::DistillBatch b;
  // mean(z²) = (1 + 4 + 9 + 16 + 0 + 1) / 6 = 31/6; Σ(z − z_t) = 7 − 3 = 4.
  b.student.logits = torch::tensor({{1.0, -2.0, 3.0}, {4.0, 0.0, 1.0}}, torch::kFloat64).requires_grad_(true);
  b.teacher.logits = torch::tensor({{1.0, 1.0, 1.0}, {0.0, 0.0, 0.0}}, torch::kFloat64);
  return b;
}

double at(const kd::LossResult& r, const std::string& key) {
  auto it = r.parts.find(key);
  EXPECT_NE(it, r.parts.end()) << "missing part " << key;
  return it == r.parts.end() ? NAN : it->second.item<double>();
}

TEST(WeightedSum, TotalAndPartsMatchClosedForm) {
  auto sumdiff = std::make_shared<SumDiff>();
  kd::WeightedSum total({{"sq", MeanSquare(2.0), 0.5}, {"d", torch::nn::AnyModule(sumdiff), 0.25}});
  const auto b = logits_batch();
  const auto r = total->forward(b);
  const double sq = 2.0 * 31.0 / 6.0, d = 4.0;
  EXPECT_NEAR(r.total.item<double>(), 0.5 * sq + 0.25 * d, 1e-12);
  EXPECT_NEAR(at(r, "sq"), sq, 1e-12);          // the term's total, not "sq.sq"
  EXPECT_NEAR(at(r, "sq.half"), sq / 2, 1e-12);  // a sub-part, prefixed
  EXPECT_NEAR(at(r, "d"), d, 1e-12);
  EXPECT_NEAR(at(r, "d.diff"), d, 1e-12);
  EXPECT_DOUBLE_EQ(at(r, "w.sq"), 0.5);
  EXPECT_DOUBLE_EQ(at(r, "w.d"), 0.25);
  EXPECT_EQ(r.parts.size(), 6u);
  EXPECT_EQ(r.parts.count("sq.sq"), 0u);
  for (const auto& [k, v] : r.parts) EXPECT_FALSE(v.requires_grad()) << k;
  EXPECT_EQ(total->names(), (std::vector<std::string>{"sq", "d"}));
  std::ostringstream printed;
  total->pretty_print(printed);
  EXPECT_EQ(printed.str(), "kd::WeightedSum(sq: constant(0.5), d: constant(0.25))");
}

TEST(WeightedSum, GradientIsTheWeightedSumOfGradients) {
  auto sumdiff = std::make_shared<SumDiff>();
  kd::WeightedSum total({{"sq", MeanSquare(1.5), 0.3}, {"d", torch::nn::AnyModule(sumdiff), 0.7}});
  auto b = logits_batch();
  total->forward(b).total.backward();
  // Closed forms: ∂(c·mean z²)/∂z = 2cz/N, ∂Σ(z − z_t)/∂z = 1; ∂/∂c = mean z² = 31/6.
  const auto z = b.student.logits.detach();
  const auto expected = 0.3 * 2 * 1.5 * z / 6.0 + 0.7 * torch::ones_like(z);
  EXPECT_LT(kd::testing::max_rel_error(b.student.logits.grad(), expected), 1e-12);
  EXPECT_NEAR(total->named_parameters()["sq.c"].grad().item<double>(), 0.3 * 31.0 / 6.0, 1e-12);

  // The same for each loss's own gradient taken alone, weighted and summed.
  auto z1 = z.clone().requires_grad_(true), z2 = z.clone().requires_grad_(true);
  kd::DistillBatch b1 = b, b2 = b;
  b1.student.logits = z1;
  b2.student.logits = z2;
  MeanSquare(1.5)->forward(b1).total.backward();
  sumdiff->forward(b2).total.backward();
  EXPECT_LT(kd::testing::max_rel_error(b.student.logits.grad(), 0.3 * z1.grad() + 0.7 * z2.grad()), 1e-12);
}

TEST(WeightedSum, ThreePhaseCombinationIsOneLine) {
  torch::manual_seed(0);
  kd::FeatureL2 feat(kd::FeatureL2Options({{/*teacher=*/0, /*student=*/0, 1.0, /*student_dim=*/3, /*teacher_dim=*/5}}));
  kd::AttentionMSE attn;
  kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(3.0));
  kd::WeightedSum total({{"feat", feat, 1.0}, {"attn", attn, 0.5}, {"kl", kl, 0.8}});

  kd::DistillBatch b;
  b.student.logits = torch::randn({2, 4});
  b.teacher.logits = torch::randn({2, 4});
  b.targets = torch::tensor({1, 3}, torch::kLong);
  b.student.hidden_states = {torch::randn({2, 3})};
  b.teacher.hidden_states = {torch::randn({2, 5})};
  b.student.attentions = {torch::softmax(torch::randn({2, 1, 3, 3}), -1)};
  b.teacher.attentions = {torch::softmax(torch::randn({2, 1, 3, 3}), -1)};
  const auto r = total->forward(b);
  const double f = feat->forward(b).total.item<double>();
  const double a = attn->forward(b).total.item<double>();
  const double k = kl->forward(b).total.item<double>();
  EXPECT_NEAR(r.total.item<double>(), f + 0.5 * a + 0.8 * k, 1e-5);
  EXPECT_NEAR(at(r, "feat"), f, 1e-6);
  EXPECT_NEAR(at(r, "feat.0"), f, 1e-6);  // FeatureL2's own "feat.0" keeps its name
  EXPECT_NEAR(at(r, "attn"), a, 1e-6);
  EXPECT_NEAR(at(r, "kl"), k, 1e-6);
  EXPECT_DOUBLE_EQ(at(r, "w.feat"), 1.0);
  EXPECT_DOUBLE_EQ(at(r, "w.attn"), 0.5);
  EXPECT_DOUBLE_EQ(at(r, "w.kl"), 0.8);

  // The projection is a submodule parameter of the sum: optimizers see it.
  const auto named = total->named_parameters();
  EXPECT_TRUE(named.contains("feat.proj0.weight"));
  EXPECT_TRUE(named.contains("feat.proj0.bias"));
  EXPECT_EQ(total->parameters().size(), 2u);
  EXPECT_TRUE(total->named_children().contains("attn"));
  EXPECT_TRUE(total->named_children().contains("kl"));
}

TEST(WeightedSum, LossAndPolicyParametersAreRegistered) {
  kd::WeightedSum total({{"sq", MeanSquare(), 1.0}, {"d", torch::nn::AnyModule(std::make_shared<SumDiff>())}},
                        kd::UncertaintyWeighting(2));
  const auto named = total->named_parameters();
  EXPECT_TRUE(named.contains("sq.c"));
  EXPECT_TRUE(named.contains("weighting.log_vars"));
  EXPECT_EQ(total->parameters().size(), 2u);
  // An optimizer over the sum moves the loss's own parameter.
  torch::optim::SGD opt(total->parameters(), 0.1);
  auto b = logits_batch();
  total->forward(b).total.backward();
  opt.step();
  EXPECT_NE(named["sq.c"].item<double>(), 1.0);
}

TEST(WeightedSum, ScheduledWeightsFollowProgressAndAreLogged) {
  kd::WeightedSum total({{"a", MeanSquare(), kd::Schedule::linear(0.7, 0.0)},
                         {"b", MeanSquare(), kd::Schedule::cosine(1.0, 0.2)},
                         {"c", MeanSquare(), kd::Schedule::step(1.0, 0.1, {0.5, 0.75})},
                         {"d", MeanSquare(), 2}});
  auto b = logits_batch();
  const double L = 31.0 / 6.0;
  for (double p : {0.0, 0.25, 0.6, 1.0}) {
    b.step.progress = p;
    const auto r = total->forward(b);
    const double wa = 0.7 * (1 - p);
    const double wb = 0.2 + 0.8 * 0.5 * (1 + std::cos(M_PI * p));
    const double wc = p < 0.5 ? 1.0 : (p < 0.75 ? 0.1 : 0.01);
    EXPECT_NEAR(at(r, "w.a"), wa, 1e-12) << p;
    EXPECT_NEAR(at(r, "w.b"), wb, 1e-12) << p;
    EXPECT_NEAR(at(r, "w.c"), wc, 1e-12) << p;
    EXPECT_NEAR(at(r, "w.d"), 2.0, 1e-12) << p;
    EXPECT_NEAR(r.total.item<double>(), (wa + wb + wc + 2.0) * L, 1e-12) << p;
  }
}

TEST(WeightedSum, NeedsInputGradComesFromAnyTerm) {
  kd::WeightedSum plain({{"kl", kd::TemperatureKL()}});
  EXPECT_FALSE(plain->needs_input_grad());
  EXPECT_FALSE(kd::needs_input_grad(*plain.ptr()));

  // GradientMatching has a needs_input_grad() member (found without the interface).
  kd::WeightedSum r1({{"kl", kd::TemperatureKL()}, {"r1", kd::GradientMatching()}});
  EXPECT_TRUE(r1->needs_input_grad());
  EXPECT_TRUE(kd::needs_input_grad(*r1.ptr()));  // the sum itself is a kd::NeedsInputGrad
  EXPECT_TRUE(kd::needs_input_grad(*torch::nn::AnyModule(r1).ptr()));

  // A user module behind AnyModule, through the kd::NeedsInputGrad interface; read live.
  auto user = std::make_shared<SumDiff>();
  kd::WeightedSum u({{"d", torch::nn::AnyModule(user)}});
  EXPECT_TRUE(u->needs_input_grad());
  user->flag = false;
  EXPECT_FALSE(u->needs_input_grad());

  // Nested sums.
  kd::WeightedSum outer({{"inner", r1, 0.5}});
  EXPECT_TRUE(outer->needs_input_grad());
}

TEST(WeightedSum, NestedSumPrefixesInnerParts) {
  kd::WeightedSum inner({{"sq", MeanSquare(), 2.0}});
  kd::WeightedSum outer({{"inner", inner, 0.5}, {"sq", MeanSquare()}});
  const auto r = outer->forward(logits_batch());
  const double L = 31.0 / 6.0;
  EXPECT_NEAR(r.total.item<double>(), 0.5 * 2 * L + L, 1e-12);
  EXPECT_NEAR(at(r, "inner"), 2 * L, 1e-12);
  EXPECT_NEAR(at(r, "inner.sq"), L, 1e-12);
  EXPECT_DOUBLE_EQ(at(r, "inner.w.sq"), 2.0);
  EXPECT_DOUBLE_EQ(at(r, "w.inner"), 0.5);
  EXPECT_TRUE(outer->named_parameters().contains("inner.sq.c"));
}

TEST(WeightedSum, AddAppendsAndRegisters) {
  kd::WeightedSum total;
  total->add({"sq", MeanSquare(), 3.0});
  EXPECT_TRUE(total->named_parameters().contains("sq.c"));
  EXPECT_NEAR(total->forward(logits_batch()).total.item<double>(), 3 * 31.0 / 6.0, 1e-12);
  EXPECT_THROW(total->add({"sq", MeanSquare()}), kd::Error);
  EXPECT_EQ(total->terms().size(), 1u);
}

TEST(WeightedSum, CloneIsDeep) {
  kd::WeightedSum total({{"sq", MeanSquare(2.0), 0.5}}, kd::UncertaintyWeighting(1));
  auto copy = std::dynamic_pointer_cast<kd::WeightedSumImpl>(total->clone());
  ASSERT_TRUE(copy);
  {
    torch::NoGradGuard no_grad;
    total->named_parameters()["sq.c"].fill_(5.0);
    total->named_parameters()["weighting.log_vars"].fill_(1.0);
  }
  EXPECT_DOUBLE_EQ(copy->named_parameters()["sq.c"].item<double>(), 2.0);
  EXPECT_DOUBLE_EQ(copy->named_parameters()["weighting.log_vars"].item<double>(), 0.0);
  EXPECT_EQ(copy->names(), total->names());
  EXPECT_NEAR(copy->forward(logits_batch()).total.item<double>(), 0.5 * 2.0 * 31.0 / 6.0, 1e-6);
}

TEST(WeightedSum, Errors) {
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const kd::Error& e) {
      return e.what();
    }
    return "(no kd::Error)";
  };
  EXPECT_THAT(message([] { kd::WeightedSum s({{"a", MeanSquare()}, {"a", MeanSquare()}}); }),
              HasSubstr("both named 'a'"));
  EXPECT_THAT(message([] { kd::WeightedSum s({{"a.b", MeanSquare()}}); }), HasSubstr("invalid name 'a.b'"));
  EXPECT_THAT(message([] { kd::WeightedSum s({{"w", MeanSquare()}}); }), HasSubstr("reserved"));
  EXPECT_THAT(message([] { kd::WeightedSum s({{"a", MeanSquare()}}, kd::UncertaintyWeighting(2)); }),
              HasSubstr("built for 2 losses but the sum has 1"));
  EXPECT_THAT(message([] { kd::WeightedSum().ptr()->forward(logits_batch()); }), HasSubstr("no losses"));

  auto non_scalar = std::make_shared<Fixed>(torch::ones({2}));
  EXPECT_THAT(message([&] { kd::WeightedSum({{"v", torch::nn::AnyModule(non_scalar)}})->forward(logits_batch()); }),
              HasSubstr("loss 'v' returned a total of shape [2]"));

  auto nan = std::make_shared<Fixed>(torch::scalar_tensor(NAN));
  kd::WeightedSum with_nan({{"ok", MeanSquare()}, {"bad", torch::nn::AnyModule(nan)}});
  auto b = logits_batch();
  b.step.global_step = 17;
  // A NaN term makes the total NaN and is reported as a part: the trainer's policy decides, not the loss.
  const auto r = with_nan->forward(b);
  EXPECT_TRUE(std::isnan(r.total.item<double>()));
  EXPECT_TRUE(std::isnan(r.parts.at("bad").item<double>()));
  EXPECT_TRUE(std::isfinite(r.parts.at("ok").item<double>()));

  // A sub-loss's own error carries the term's name.
  kd::WeightedSum kl({{"soft", kd::TemperatureKL()}});
  auto bad = logits_batch();
  bad.teacher.logits = torch::zeros({2, 5}, torch::kFloat64);
  try {
    kl->forward(bad);
    FAIL() << "no error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), ::testing::StartsWith("shape error: loss 'soft': "));
    EXPECT_EQ(std::string(e.what()).find("shape error", 5), std::string::npos);  // the prefix is not repeated
  }
  EXPECT_THAT(message([] { kd::WeightedSum s({{"a", MeanSquare()}}); s->loss("b"); }), HasSubstr("it has: a"));
}

}  // namespace
