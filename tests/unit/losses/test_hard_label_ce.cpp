// HardLabelCE against torch.nn.functional.cross_entropy (tests/parity/hard_label_ce.py), closed forms, errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "kd/core/error.h"
#include "kd/losses/hard_label_ce.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("hard_label_ce.py") + "/hard_label_ce.json");
  return r;
}

const std::vector<std::pair<std::string, double>> kSmoothing{{"e0", 0.0}, {"e10", 0.1}, {"e35", 0.35}};

void expect_case(const std::string& prefix, const torch::Tensor& logits, const torch::Tensor& targets,
                 const kd::HardLabelCEOptions& options) {
  auto x = logits.clone().requires_grad_(true);
  auto loss = kd::functional::hard_label_ce(x, targets, options);
  EXPECT_LT(max_rel_error(loss, ref()[prefix + "_loss"]), 1e-6) << prefix;
  loss.backward();
  EXPECT_LT(max_rel_error(x.grad(), ref()[prefix + "_grad"]), 1e-6) << prefix << " gradient";
}

TEST(HardLabelCE, MatchesPyTorchCrossEntropy) {
  for (const auto& [name, eps] : kSmoothing) {
    SCOPED_TRACE(name);
    const auto o = kd::HardLabelCEOptions().label_smoothing(eps);
    expect_case("bc_" + name, ref()["bc_logits"], ref()["bc_targets"], o);
    expect_case("seq_" + name, ref()["seq_logits"], ref()["seq_targets"], o);
    expect_case("custom_" + name, ref()["bc_logits"], ref()["custom_targets"],
                kd::HardLabelCEOptions(o).ignore_index(2));
  }
}

TEST(HardLabelCE, SoftTargetsMatchPyTorchProbabilityTargets) {
  for (const auto& [name, eps] : kSmoothing) {
    SCOPED_TRACE(name);
    expect_case("soft_" + name, ref()["bc_logits"], ref()["soft_targets"], kd::HardLabelCEOptions().label_smoothing(eps));
  }
  // Closed forms: a one-hot row is the hard label; a mixture is the mixture of the two hard losses.
  const auto logits = ref()["bc_logits"];
  const auto a = torch::tensor({0, 4, 1, 2, 1, 3}), b = torch::tensor({3, 3, 0, 0, 4, 2});
  const auto onehot = [](const torch::Tensor& t) { return torch::one_hot(t, 5).to(torch::kFloat64); };
  EXPECT_LT(max_rel_error(kd::functional::hard_label_ce(logits, onehot(a)), kd::functional::hard_label_ce(logits, a)), 1e-12);
  const auto mixed = kd::functional::hard_label_ce(logits, 0.7 * onehot(a) + 0.3 * onehot(b));
  const auto want = 0.7 * kd::functional::hard_label_ce(logits, a) + 0.3 * kd::functional::hard_label_ce(logits, b);
  EXPECT_LT(max_rel_error(mixed, want), 1e-12);
  kd::testing::expect_kd_error([&] { kd::functional::hard_label_ce(logits, 0.5 * onehot(a)); }, kd::ErrorCategory::kValue,
                               {"soft targets [6, 5] must be distributions"});
}

TEST(HardLabelCE, ModuleReportsCEAndHonoursTheMask) {
  const auto logits = ref()["seq_logits"], targets = ref()["seq_targets"];
  kd::HardLabelCE ce(kd::HardLabelCEOptions().label_smoothing(0.1));
  kd::DistillBatch batch;
  batch.student.logits = logits;
  batch.targets = targets;
  auto r = ce->forward(batch);
  EXPECT_LT(max_rel_error(r.total, ref()["seq_e10_loss"]), 1e-6);
  EXPECT_EQ(r.parts.at("ce").item<double>(), r.total.item<double>());
  // A [B, L] mask drops positions like ignore_index does.
  auto masked_targets = targets.clone();
  masked_targets[0][0] = -100;
  const double expected = kd::functional::hard_label_ce(logits, masked_targets, ce->options).item<double>();
  batch.mask = torch::tensor({{0, 1, 1}, {1, 1, 1}});
  EXPECT_NEAR(ce->forward(batch).total.item<double>(), expected, 1e-15);
}

TEST(HardLabelCE, ClosedFormsAndEdgeCases) {
  // Uniform logits over C classes: −log(1/C) whatever the smoothing.
  const auto uniform = torch::zeros({3, 4}, torch::kFloat64);
  const auto y = torch::tensor({0, 3, 1});
  for (double eps : {0.0, 0.2}) {
    EXPECT_NEAR(kd::functional::hard_label_ce(uniform, y, kd::HardLabelCEOptions().label_smoothing(eps)).item<double>(),
                std::log(4.0), 1e-15);
  }
  // Two classes, logits [a, 0], target 0: log(1 + e^(−a)).
  const double a = 1.3;
  const auto two = torch::tensor({a, 0.0}, torch::kFloat64).reshape({1, 2});
  EXPECT_NEAR(kd::functional::hard_label_ce(two, torch::tensor({0})).item<double>(), std::log1p(std::exp(-a)), 1e-15);
  // Every target ignored: 0 (torch gives NaN), zero gradient.
  auto x = torch::randn({2, 3}, torch::kFloat64).requires_grad_(true);
  auto none = kd::functional::hard_label_ce(x, torch::full({2}, -100, torch::kLong));
  EXPECT_EQ(none.item<double>(), 0.0);
  none.backward();
  EXPECT_EQ(x.grad().abs().max().item<double>(), 0.0);
  // Ignored rows never enter the softmax: NaN logits there change nothing, not even the gradient.
  auto logits = torch::randn({3, 4}, torch::kFloat64);
  const double clean = kd::functional::hard_label_ce(logits, torch::tensor({1, -100, 2})).item<double>();
  logits[1].fill_(std::nan(""));
  auto p = logits.clone().requires_grad_(true);
  auto l = kd::functional::hard_label_ce(p, torch::tensor({1, -100, 2}));
  EXPECT_EQ(l.item<double>(), clean);
  l.backward();
  EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
}

template <typename Fn>
void expect_error(Fn fn, kd::ErrorCategory category, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), category) << e.what();
    for (const auto& p : pieces) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

TEST(HardLabelCE, BadInputThrowsClearErrors) {
  using kd::ErrorCategory;
  const auto logits = torch::randn({2, 3}, torch::kFloat64);
  expect_error([] { kd::HardLabelCE(kd::HardLabelCEOptions().label_smoothing(1.0)); }, ErrorCategory::kValue,
               {"label_smoothing"});
  expect_error([] { kd::HardLabelCE(kd::HardLabelCEOptions().label_smoothing(-0.1)); }, ErrorCategory::kValue,
               {"label_smoothing"});
  expect_error([&] { kd::functional::hard_label_ce(logits, torch::Tensor()); }, ErrorCategory::kValue, {"targets"});
  expect_error(
      [&] {
        kd::functional::hard_label_ce(logits, torch::tensor({0, 1, 2}));
      },
      ErrorCategory::kShape, {"[2, 3]", "[3]"});
  expect_error(
      [&] {
        kd::functional::hard_label_ce(logits, torch::tensor({0, 3}));
      },
      ErrorCategory::kValue, {"targets [2]", "[0, 3]", "logits [2, 3]", "[0, 2]"});
  expect_error(
      [&] {
        kd::functional::hard_label_ce(logits, torch::tensor({0.0, 1.0}));
      },
      ErrorCategory::kValue, {"integer", "[2]", "[2, 3]"});
  // NaN logits give a NaN loss, as in PyTorch; the trainer's non-finite policy decides what follows.
  auto nan_logits = logits.clone();
  nan_logits[0][1] = std::nan("");
  EXPECT_TRUE(std::isnan(kd::functional::hard_label_ce(nan_logits, torch::tensor({0, 1})).item<double>()));
}

}  // namespace
