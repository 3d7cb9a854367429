// TensorDataset helpers: keep_labels (fewer labels for the student), select, and the seeded orders.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "kd/core/error.h"
#include "kd/data/tensor_dataset.h"
#include "reference.h"

namespace {

kd::data::TensorDataset numbered(int64_t n) {
  return {torch::arange(n, torch::kFloat).unsqueeze(1), torch::arange(n, torch::kLong) % 7, torch::Tensor()};
}

TEST(KeepLabels, KeepsTheFirstRoundedFractionOfTheSeededPermutationAndHidesTheRest) {
  const auto d = numbered(10);
  const auto few = kd::data::keep_labels(d, 0.34, /*seed=*/5);  // round(3.4) = 3 labelled
  const auto order = kd::data::permutation(10, 5);
  const std::set<int64_t> kept(order.begin(), order.begin() + 3);
  for (int64_t i = 0; i < 10; ++i) {
    const int64_t t = few.targets[i].item<int64_t>();
    if (kept.count(i)) {
      EXPECT_EQ(t, i % 7) << i;
    } else {
      EXPECT_EQ(t, -100) << i;
    }
  }
  // Inputs are untouched and the original keeps its labels.
  EXPECT_TRUE(torch::equal(few.inputs, d.inputs));
  EXPECT_TRUE(torch::equal(d.targets, torch::arange(10, torch::kLong) % 7));
  // The same seed draws the same examples; a fraction of 1 keeps all; another ignore value is used as given.
  EXPECT_TRUE(torch::equal(kd::data::keep_labels(d, 0.34, 5).targets, few.targets));
  EXPECT_TRUE(torch::equal(kd::data::keep_labels(d, 1.0, 5).targets, d.targets));
  EXPECT_EQ((kd::data::keep_labels(d, 0.5, 1, -1).targets == -1).sum().item<int64_t>(), 5);
}

TEST(KeepLabels, RefusesBadFractionsAndTargetsThatAreNotClassIndices) {
  using kd::testing::expect_kd_error;
  const auto d = numbered(4);
  expect_kd_error([&] { kd::data::keep_labels(d, 0.0, 0); }, kd::ErrorCategory::kValue, {"(0, 1]", "got 0"});
  expect_kd_error([&] { kd::data::keep_labels(d, 1.5, 0); }, kd::ErrorCategory::kValue, {"(0, 1]"});
  auto seq = d;
  seq.targets = torch::zeros({4, 3}, torch::kLong);
  expect_kd_error([&] { kd::data::keep_labels(seq, 0.5, 0); }, kd::ErrorCategory::kValue, {"[N] integer", "[4, 3]"});
}

}  // namespace
