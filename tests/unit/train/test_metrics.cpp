#include <cmath>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/metrics.h"

namespace {

TEST(ClassificationMetrics, HandComputedConfusionF1AndAccuracy) {
  // true:      0 0 0 1 1 2
  // predicted: 0 0 1 1 2 2
  // class 0: TP 2, FP 0, FN 1 -> F1 = 4/5
  // class 1: TP 1, FP 1, FN 1 -> F1 = 2/4
  // class 2: TP 1, FP 1, FN 0 -> F1 = 2/3
  kd::ClassificationMetrics m(3);
  m.update_predictions(torch::tensor({0, 0, 1}, torch::kLong), torch::tensor({0, 0, 0}, torch::kLong));
  m.update_predictions(torch::tensor({1, 2, 2}, torch::kLong), torch::tensor({1, 1, 2}, torch::kLong));
  EXPECT_EQ(m.count(), 6);
  EXPECT_DOUBLE_EQ(m.accuracy(), 4.0 / 6.0);
  auto f1 = m.per_class_f1();
  EXPECT_DOUBLE_EQ(f1[0], 0.8);
  EXPECT_DOUBLE_EQ(f1[1], 0.5);
  EXPECT_NEAR(f1[2], 2.0 / 3.0, 1e-15);
  EXPECT_NEAR(m.macro_f1(), (0.8 + 0.5 + 2.0 / 3.0) / 3.0, 1e-15);
  EXPECT_DOUBLE_EQ(m.per_class_recall()[0], 2.0 / 3.0);
  EXPECT_EQ(m.confusion()[0][1].item<int64_t>(), 1);
}

// Data-parallel evaluation sums the ranks' confusion matrices: the sum of two halves' counts
// must score as the whole (the hand-computed case above).
TEST(ClassificationMetrics, FromSummedConfusionCountsScoresAsTheWhole) {
  kd::ClassificationMetrics a(3), b(3);
  a.update_predictions(torch::tensor({0, 0, 1}, torch::kLong), torch::tensor({0, 0, 0}, torch::kLong));
  b.update_predictions(torch::tensor({1, 2, 2}, torch::kLong), torch::tensor({1, 1, 2}, torch::kLong));
  const auto m = kd::ClassificationMetrics::from_confusion(a.confusion() + b.confusion());
  EXPECT_EQ(m.count(), 6);
  EXPECT_DOUBLE_EQ(m.accuracy(), 4.0 / 6.0);
  EXPECT_NEAR(m.macro_f1(), (0.8 + 0.5 + 2.0 / 3.0) / 3.0, 1e-15);
  EXPECT_TRUE(torch::equal(kd::ClassificationMetrics::from_confusion(torch::tensor({{2, 1, 0}, {0, 1, 1}, {0, 0, 1}}))
                               .confusion(),
                           m.confusion()));
  EXPECT_THROW(kd::ClassificationMetrics::from_confusion(torch::zeros({2, 3}, torch::kLong)), kd::Error);
}

TEST(ClassificationMetrics, LogitsArgmaxAndBadInput) {
  kd::ClassificationMetrics m(2);
  m.update(torch::tensor({{2.0, 1.0}, {0.0, 3.0}}), torch::tensor({0, 0}, torch::kLong));
  EXPECT_DOUBLE_EQ(m.accuracy(), 0.5);
  EXPECT_THROW(m.update(torch::zeros({2, 3}), torch::zeros({2}, torch::kLong)), kd::Error);
  EXPECT_THROW(m.update_predictions(torch::zeros({2}, torch::kLong), torch::tensor({0, 5}, torch::kLong)), kd::Error);
  EXPECT_THROW(kd::ClassificationMetrics(1), kd::Error);
}

TEST(LanguageModelMetrics, ClosedForms) {
  // A uniform model over 256 bytes: nll = ln 256 per byte -> 8 bits per byte, perplexity 256.
  const double nll = 100 * std::log(256.0);
  EXPECT_NEAR(kd::bits_per_byte(nll, 100), 8.0, 1e-12);
  EXPECT_NEAR(kd::perplexity(nll, 100), 256.0, 1e-9);
  EXPECT_THROW(kd::bits_per_byte(1.0, 0), kd::Error);
}

}  // namespace
