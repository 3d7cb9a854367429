// kd::Schedule against its closed forms, written out here independently.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "kd/core/error.h"
#include "kd/losses/schedule.h"

namespace {

const double kPi = std::acos(-1.0);
const std::vector<double> kProgress{0.0, 0.1, 0.25, 1.0 / 3.0, 0.5, 0.7, 0.9, 1.0};

TEST(Schedule, ConstantIsTheSameEverywhere) {
  const auto s = kd::Schedule::constant(0.42);
  for (double p : kProgress) EXPECT_EQ(s(p), 0.42) << p;
  EXPECT_EQ(s(-3.0), 0.42);
  EXPECT_EQ(s(7.0), 0.42);
  EXPECT_EQ(s.kind(), kd::Schedule::Kind::kConstant);
  EXPECT_EQ(s.describe(), "constant(0.42)");
  // The default is constant 0.
  EXPECT_EQ(kd::Schedule()(0.5), 0.0);
}

TEST(Schedule, LinearInterpolatesAndClampsProgress) {
  // The documented α = 0.7·(1 − progress) and R1's λ from 0.8 to 0.3.
  const auto alpha = kd::Schedule::linear(0.7, 0.0);
  const auto lambda = kd::Schedule::linear(0.8, 0.3);
  for (double p : kProgress) {
    EXPECT_NEAR(alpha(p), 0.7 * (1.0 - p), 1e-15) << p;
    EXPECT_NEAR(lambda(p), 0.8 - 0.5 * p, 1e-15) << p;
  }
  EXPECT_EQ(alpha(0.0), 0.7);
  EXPECT_EQ(alpha(1.0), 0.0);
  EXPECT_EQ(lambda(-0.5), 0.8);  // progress clamped to [0, 1]
  EXPECT_NEAR(lambda(1.5), 0.3, 1e-15);
  EXPECT_EQ(lambda.start(), 0.8);
  EXPECT_EQ(lambda.end(), 0.3);
  EXPECT_EQ(alpha.describe(), "linear(0.7 -> 0)");
  // Increasing schedules work the same way.
  EXPECT_NEAR(kd::Schedule::linear(1.0, 4.0)(0.25), 1.75, 1e-15);
}

TEST(Schedule, CosineFollowsHalfACosineFromStartToEnd) {
  const auto s = kd::Schedule::cosine(3e-5, 1e-6);
  for (double p : kProgress) {
    const double expected = 1e-6 + (3e-5 - 1e-6) * 0.5 * (1.0 + std::cos(kPi * p));
    EXPECT_NEAR(s(p), expected, 1e-20) << p;
  }
  EXPECT_NEAR(s(0.0), 3e-5, 1e-20);
  EXPECT_NEAR(s(0.5), 0.5 * (3e-5 + 1e-6), 1e-20);  // midpoint
  EXPECT_NEAR(s(1.0), 1e-6, 1e-20);
  EXPECT_NEAR(s(2.0), 1e-6, 1e-20);
  // Symmetric about the midpoint: s(p) + s(1 − p) = start + end.
  for (double p : kProgress) EXPECT_NEAR(s(p) + s(1.0 - p), 3e-5 + 1e-6, 1e-19) << p;
  EXPECT_EQ(kd::Schedule::cosine(4, 1).describe(), "cosine(4 -> 1)");
}

TEST(Schedule, StepMultipliesByGammaAtEachMilestonePassed) {
  // Milestones given out of order are sorted; a milestone counts once progress reaches it.
  const auto s = kd::Schedule::step(2.0, 0.5, {0.75, 0.25});
  EXPECT_EQ(s(0.0), 2.0);
  EXPECT_EQ(s(0.2499), 2.0);
  EXPECT_EQ(s(0.25), 1.0);
  EXPECT_EQ(s(0.5), 1.0);
  EXPECT_EQ(s(0.75), 0.5);
  EXPECT_EQ(s(1.0), 0.5);
  EXPECT_EQ(s(9.0), 0.5);
  EXPECT_EQ(s.kind(), kd::Schedule::Kind::kStep);
  EXPECT_EQ(s.describe(), "step(2, x0.5 at [0.25, 0.75])");
  // No milestones: constant start; γ > 1 grows.
  EXPECT_EQ(kd::Schedule::step(3.0, 0.1, {})(1.0), 3.0);
  EXPECT_NEAR(kd::Schedule::step(1.0, 10.0, {0.0, 0.5, 1.0})(1.0), 1000.0, 1e-12);
  EXPECT_NEAR(kd::Schedule::step(1.0, 10.0, {0.0, 0.5, 1.0})(0.0), 10.0, 1e-15);  // milestone at 0 counts at 0
}

TEST(Schedule, StepRejectsMilestonesOutsideTheUnitInterval) {
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    try {
      kd::Schedule::step(1.0, 0.5, {0.5, bad});
      ADD_FAILURE() << "milestone " << bad << " must throw";
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
      EXPECT_THAT(e.what(), ::testing::HasSubstr("milestones"));
    }
  }
}

TEST(Schedule, RampBuildsTheKindItIsGiven) {
  // ramp(kind, a, b) is the named constructor of that kind: the same values at every progress.
  const auto cosine = kd::Schedule::ramp(kd::Schedule::Kind::kCosine, 0.8, 0.3);
  const auto linear = kd::Schedule::ramp(kd::Schedule::Kind::kLinear, 0.8, 0.3);
  for (double p : kProgress) {
    EXPECT_DOUBLE_EQ(cosine(p), 0.3 + 0.5 * (0.8 - 0.3) * (1.0 + std::cos(kPi * p))) << p;
    EXPECT_DOUBLE_EQ(linear(p), 0.8 + (0.3 - 0.8) * p) << p;
  }
  EXPECT_EQ(kd::Schedule::ramp(kd::Schedule::Kind::kConstant, 0.5, 9.0).describe(), "constant(0.5)");
  EXPECT_THROW(kd::Schedule::ramp(kd::Schedule::Kind::kStep, 1.0, 0.1), kd::Error);
}

}  // namespace
