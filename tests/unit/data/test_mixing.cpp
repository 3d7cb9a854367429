// CutMix and TokenMix: where each pixel / token comes from, and soft targets in exactly that ratio
// (counted here from the outputs, independently of the code's own share), masks, errors, resumable draws.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/data/mixing.h"
#include "reference.h"

namespace {
using kd::data::CutMix;
using kd::data::MixOptions;
using kd::data::TokenMix;

// Image b is filled with the value b + 1, so every output pixel names the image it came from.
torch::Tensor labelled_images(int64_t B, int64_t H, int64_t W) {
  return (torch::arange(B, torch::kFloat32) + 1).view({B, 1, 1, 1}).expand({B, 2, H, W}).clone();
}

TEST(CutMix, TheBoxComesFromThePartnerAndTheTargetsMixByItsArea) {
  auto x = labelled_images(3, 6, 8);
  auto y = torch::tensor({0, 1, 2});
  const auto partner = torch::tensor({2, 0, 1});
  const double share = CutMix(MixOptions(4)).mix(x, y, partner, 1, 4, 2, 7);  // 3 x 5 of 6 x 8 pixels
  EXPECT_DOUBLE_EQ(share, 15.0 / 48.0);
  for (int64_t b = 0; b < 3; ++b) {
    const auto from_partner = x[b].eq(partner[b].item<float>() + 1).sum().item<int64_t>();
    EXPECT_EQ(from_partner, 2 * 15) << b;  // both channels of the box
    EXPECT_TRUE(x[b].index({torch::indexing::Slice(), torch::indexing::Slice(1, 4), torch::indexing::Slice(2, 7)})
                    .eq(partner[b].item<float>() + 1)
                    .all()
                    .item<bool>());
  }
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(torch::allclose(y[0], torch::tensor({33.0f / 48, 0.f, 15.0f / 48, 0.f})));
  EXPECT_TRUE(torch::allclose(y.sum(1), torch::ones({3})));
}

TEST(CutMix, RandomBoxesMixTargetsInThePixelRatioAndRepeatFromTheGenerator) {
  CutMix cutmix(MixOptions(10).alpha(1.0));
  for (int trial = 0; trial < 20; ++trial) {
    torch::manual_seed(trial);
    auto x = labelled_images(4, 28, 28);
    auto y = torch::tensor({0, 1, 2, 3});
    cutmix.apply(x, y);
    for (int64_t b = 0; b < 4; ++b) {
      const double own = x[b].eq(b + 1).to(torch::kDouble).mean().item<double>();
      if (own == 1.0) continue;  // an empty box, or the image drew itself as partner
      EXPECT_NEAR(y[b][b].item<double>(), own, 1e-6) << "trial " << trial << " image " << b;
    }
    // The same seed draws the same mix (the default generator is what checkpoints restore).
    torch::manual_seed(trial);
    auto x2 = labelled_images(4, 28, 28);
    auto y2 = torch::tensor({0, 1, 2, 3});
    cutmix.apply(x2, y2);
    EXPECT_TRUE(torch::equal(x, x2) && torch::equal(y, y2));
  }
}

TEST(TokenMix, TheSpanComesFromThePartnerAndTargetsMixByRealTokens) {
  // Sequence 0: 6 real tokens of 1; sequence 1: 3 real tokens of 2, then padding.
  auto x = torch::tensor({{1, 1, 1, 1, 1, 1}, {2, 2, 2, 0, 0, 0}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 1.f, 1.f, 1.f}, {1.f, 1.f, 1.f, 0.f, 0.f, 0.f}});
  auto y = torch::tensor({0, 1});
  const auto share = TokenMix(MixOptions(2)).mix(x, y, mask, torch::tensor({1, 0}), 2, 3);  // positions 2..4
  EXPECT_TRUE(torch::equal(x, torch::tensor({{1, 1, 2, 0, 0, 1}, {2, 2, 1, 1, 1, 0}})));
  EXPECT_TRUE(torch::equal(mask, torch::tensor({{1.f, 1.f, 1.f, 0.f, 0.f, 1.f}, {1.f, 1.f, 1.f, 1.f, 1.f, 0.f}})));
  // Row 0 keeps 3 of its real tokens and gains 1 of row 1's: a = 1/4. Row 1 keeps 2, gains 3: a = 3/5.
  EXPECT_TRUE(torch::allclose(share, torch::tensor({0.25f, 0.6f})));
  EXPECT_TRUE(torch::allclose(y, torch::tensor({{0.75f, 0.25f}, {0.6f, 0.4f}})));
}

TEST(Mixing, BadInputsNameWhatIsExpected) {
  auto images = torch::zeros({2, 1, 4, 4});
  auto lm_targets = torch::zeros({2, 4}, torch::kLong);
  kd::testing::expect_kd_error([&] { CutMix(MixOptions(3)).mix(images, lm_targets, torch::tensor({1, 0}), 0, 1, 0, 1); },
                               kd::ErrorCategory::kShape, {"class indices [B]", "[2, 4]"});
  auto tokens = torch::zeros({2, 4}, torch::kLong);
  auto labels = torch::tensor({0, 1});
  torch::Tensor none;
  kd::testing::expect_kd_error([&] { TokenMix(MixOptions(2)).mix(images, labels, none, torch::tensor({1, 0}), 0, 1); },
                               kd::ErrorCategory::kShape, {"token ids [B, L]"});
  kd::testing::expect_kd_error([&] { TokenMix(MixOptions(2)).mix(tokens, labels, none, torch::tensor({1, 0}), 3, 2); },
                               kd::ErrorCategory::kValue, {"span [3, 5) is outside [0, 4)"});
  kd::testing::expect_kd_error([] { CutMix(MixOptions(0)); }, kd::ErrorCategory::kValue, {"num_classes must be > 0"});
  auto bad = torch::tensor({0, 7});
  kd::testing::expect_kd_error([&] { CutMix(MixOptions(3)).mix(images, bad, torch::tensor({1, 0}), 0, 1, 0, 1); },
                               kd::ErrorCategory::kValue, {"outside the 3 classes"});
}

}  // namespace
