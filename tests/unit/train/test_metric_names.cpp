// kd::metric: the names evaluations report under, and what each is, against the spellings metrics.jsonl,
// summary.json and configs use (written out here).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/train/metric_names.h"

namespace {

using ::testing::ElementsAre;

TEST(MetricNames, KnownMetricsInReadingOrderWithTheirHeadings) {
  std::vector<std::string> names, headings;
  for (const auto& m : kd::metric::known()) {
    names.push_back(m.name);
    headings.push_back(m.heading);
  }
  EXPECT_THAT(names, ElementsAre("accuracy", "macro_f1", "nll", "perplexity", "bits_per_byte", "token_accuracy"));
  EXPECT_THAT(headings, ElementsAre("accuracy", "macro-F1", "nll", "perplexity", "bits/byte", "token acc"));
  EXPECT_STREQ(kd::metric::kBitsPerByte, "bits_per_byte");
  EXPECT_STREQ(kd::metric::kTokenAccuracy, "token_accuracy");
}

TEST(MetricNames, SharesAndWhichWayIsBetter) {
  // Shares of [0, 1] (differences in points), higher better; the language models' losses lower better.
  for (const char* name : {"accuracy", "macro_f1", "token_accuracy"}) {
    EXPECT_TRUE(kd::metric::info(name).share) << name;
    EXPECT_TRUE(kd::metric::info(name).higher_is_better) << name;
  }
  for (const char* name : {"nll", "perplexity", "bits_per_byte"}) {
    EXPECT_FALSE(kd::metric::info(name).share) << name;
    EXPECT_FALSE(kd::metric::info(name).higher_is_better) << name;
  }
  // A metric the library does not know is its own heading, higher better.
  const auto f1 = kd::metric::info("f1.3");
  EXPECT_EQ(f1.name, "f1.3");
  EXPECT_EQ(f1.heading, "f1.3");
  EXPECT_FALSE(f1.share);
  EXPECT_TRUE(f1.higher_is_better);
}

TEST(MetricNames, TheScoresOfEachKindOfModelHeadlineFirst) {
  EXPECT_THAT(kd::metric::classification_scores(), ElementsAre("accuracy", "macro_f1"));
  EXPECT_THAT(kd::metric::language_model_scores(), ElementsAre("bits_per_byte", "perplexity", "token_accuracy"));
}

}  // namespace
