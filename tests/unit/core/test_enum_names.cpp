// EnumNames: one table per enum, read by every parser and writer of the enum's names.
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/core/enum_names.h"
#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/schedule.h"
#include "kd/losses/temperature_kl.h"
#include "kd/losses/weighting/layer_similarity.h"
#include "kd/losses/weighting/min_norm.h"
#include "kd/models/linear_attention.h"
#include "kd/prune/pruning.h"
#include "kd/quant/fake_quantize.h"
#include "kd/train/autocast.h"
#include "kd/train/staged_trainer.h"

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

enum class Color { kRed, kGreen, kBlue };
constexpr kd::EnumNames<Color, 2> kColorNames{{{{Color::kRed, "red"}, {Color::kGreen, "green"}}}};

TEST(EnumNames, NamesParsesAndListsInTableOrder) {
  static_assert(std::string_view(kColorNames.name(Color::kGreen)) == "green", "name() is usable at compile time");
  EXPECT_STREQ(kColorNames.name(Color::kRed), "red");
  EXPECT_STREQ(kColorNames.name(Color::kBlue), "?");  // a value the table lacks
  EXPECT_EQ(kColorNames.parse("green"), Color::kGreen);
  EXPECT_EQ(kColorNames.parse("Green"), std::nullopt);  // exactly as spelt
  EXPECT_EQ(kColorNames.parse(""), std::nullopt);
  EXPECT_THAT(kColorNames.names(), ElementsAre("red", "green"));
}

TEST(EnumNames, AtNamesTheKeyTheValueAndTheChoices) {
  EXPECT_EQ(kColorNames.at("red", "paint"), Color::kRed);
  try {
    kColorNames.at("blue", "paint");
    FAIL() << "no error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
    EXPECT_THAT(e.what(), HasSubstr("paint 'blue' is not one of red, green"));
  }
}

// Every library table: names distinct, each parses back to its value, and the names configs use.
template <typename E, std::size_t N>
void expect_round_trip(const kd::EnumNames<E, N>& table) {
  std::set<std::string> seen;
  for (const auto& e : table.entries) {
    EXPECT_TRUE(seen.insert(e.name).second) << "duplicate name " << e.name;
    ASSERT_TRUE(table.parse(e.name).has_value()) << e.name;
    EXPECT_EQ(*table.parse(e.name), e.value) << e.name;
    EXPECT_STREQ(table.name(e.value), e.name);
  }
}

TEST(EnumNames, LibraryTablesRoundTripWithTheConfigNames) {
  expect_round_trip(kd::kOptimizerKindNames);
  expect_round_trip(kd::kHardnessNames);
  expect_round_trip(kd::kNonFinitePolicyNames);
  expect_round_trip(kd::kPrecisionNames);
  expect_round_trip(kd::prune::kGranularityNames);
  expect_round_trip(kd::qat::kObserverNames);
  expect_round_trip(kd::models::kAttentionKindNames);
  expect_round_trip(kd::kKLModeNames);
  expect_round_trip(kd::kProjectionInitNames);
  expect_round_trip(kd::kFeatureNormNames);
  expect_round_trip(kd::kSpatialMismatchNames);
  expect_round_trip(kd::kHeadMappingNames);
  expect_round_trip(kd::kAttentionReductionNames);
  expect_round_trip(kd::kGradientSpaceNames);
  expect_round_trip(kd::kGradientDistanceNames);
  expect_round_trip(kd::kMinNormSolverNames);
  expect_round_trip(kd::kLayerWeightNormNames);
  expect_round_trip(kd::kRampKindNames);
  EXPECT_THAT(kd::kNonFinitePolicyNames.names(), ElementsAre("skip", "lower_lr", "rollback", "stop"));
  EXPECT_EQ(kd::kNonFinitePolicyNames.parse("skip"), kd::NonFinitePolicy::kSkipStep);
  EXPECT_EQ(kd::kOptimizerKindNames.parse("sgd"), kd::OptimizerKind::kSgd);
  EXPECT_EQ(kd::kHardnessNames.parse("disagreement"), kd::Hardness::kDisagreement);
  EXPECT_EQ(kd::kPrecisionNames.parse("bf16"), kd::Precision::kBFloat16);
  EXPECT_EQ(kd::prune::kGranularityNames.parse("head"), kd::prune::Granularity::kHead);
  EXPECT_EQ(kd::qat::kObserverNames.parse("minmax"), kd::qat::Observer::kMinMax);
  EXPECT_EQ(kd::models::kAttentionKindNames.parse("linear"), kd::models::AttentionKind::kLinear);
  // The loss options' spellings, as kd-train configs and LossSpecs give them.
  EXPECT_EQ(kd::kKLModeNames.parse("jsd"), kd::KLMode::kJSD);
  EXPECT_EQ(kd::kSpatialMismatchNames.parse("adaptive_pool"), kd::SpatialMismatch::kAdaptivePool);
  EXPECT_EQ(kd::kAttentionReductionNames.parse("row_sum"), kd::AttentionReduction::kRowSum);
  EXPECT_EQ(kd::kGradientSpaceNames.parse("position_norm"), kd::GradientSpace::kPositionNorm);
  EXPECT_EQ(kd::kMinNormSolverNames.parse("frank_wolfe"), kd::MinNormSolver::kFrankWolfe);
  EXPECT_EQ(kd::kLayerWeightNormNames.parse("sum_to_count"), kd::LayerWeightNorm::kSumToCount);
  EXPECT_THAT(kd::kRampKindNames.names(), ElementsAre("linear", "cosine"));
}

}  // namespace
