// Expected calibration error against a reference written from the paper's formula
// (tests/parity/calibration.py), closed-form cases, batching, evaluate_calibration, bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/calibration.h"
#include "kd/train/metrics.h"
#include "reference.h"

namespace {

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("calibration.py") + "/calibration.json");
  return r;
}

TEST(Calibration, EceMatchesThePaperFormulaForTwoBinCounts) {
  for (int64_t bins : {15, 4}) {
    kd::CalibrationMetrics cal(bins);
    cal.update(ref()["logits"], ref()["targets"]);
    EXPECT_NEAR(cal.ece(), ref().scalar("ece" + std::to_string(bins)), 1e-12) << bins;
    EXPECT_EQ(cal.count(), 40);
  }
}

TEST(Calibration, BatchesAddUpToTheWholeSet) {
  kd::CalibrationMetrics whole(15), parts(15);
  whole.update(ref()["logits"], ref()["targets"]);
  for (int64_t s = 0; s < 40; s += 7) parts.update(ref()["logits"].slice(0, s, s + 7), ref()["targets"].slice(0, s, s + 7));
  EXPECT_NEAR(parts.ece(), whole.ece(), 1e-12);
}

TEST(Calibration, ClosedForms) {
  // Two classes, logits (0, log 3): confidence 0.75 on class 1 for every row. 3 of 4 right: calibrated.
  const auto z = torch::tensor({0.0, std::log(3.0)}, torch::kDouble).repeat({4, 1});
  kd::CalibrationMetrics cal(10);
  cal.update(z, torch::tensor({1, 1, 1, 0}));
  EXPECT_NEAR(cal.ece(), 0.0, 1e-12);
  // All wrong at confidence 0.75: |0 − 0.75|.
  kd::CalibrationMetrics wrong(10);
  wrong.update(z, torch::zeros({4}, torch::kLong));
  EXPECT_NEAR(wrong.ece(), 0.75, 1e-12);
}

TEST(Calibration, EvaluatesAModelOverADataset) {
  struct Fixed : kd::Model {
    kd::ModelOutput forward(const torch::Tensor& x) override {
      kd::ModelOutput o;
      o.logits = x;
      return o;
    }
  } model;
  const kd::data::TensorDataset d{ref()["logits"].to(torch::kFloat), ref()["targets"], torch::Tensor()};
  EXPECT_NEAR(kd::evaluate_calibration(model, d, 15, /*batch_size=*/6).ece(), ref().scalar("ece15"), 1e-6);
  // The same from evaluate_classifier's one pass, beside the accuracy.
  kd::CalibrationMetrics cal(15);
  const auto m = kd::evaluate_classifier(model, d, 5, /*batch_size=*/6, &cal);
  EXPECT_NEAR(cal.ece(), ref().scalar("ece15"), 1e-6);
  EXPECT_EQ(m.count(), 40);
}

TEST(Calibration, BadInputThrows) {
  using kd::testing::expect_kd_error;
  expect_kd_error([] { kd::CalibrationMetrics(0); }, kd::ErrorCategory::kValue, {">= 1 bin"});
  kd::CalibrationMetrics cal;
  expect_kd_error([&] { cal.ece(); }, kd::ErrorCategory::kValue, {"no predictions"});
  expect_kd_error([&] { cal.update(torch::zeros({3, 2}), torch::zeros({4}, torch::kLong)); }, kd::ErrorCategory::kShape,
                  {"[3, 2]", "[4]"});
}

}  // namespace
