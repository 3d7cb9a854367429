// RandomShiftFlip: the transform equals PyTorch's mirror + pad + crop (tests/parity/augmentation.py)
// exactly; random draws stay within the options and come from torch's generator (so a checkpoint's
// RNG state replays them).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"

TEST(RandomShiftFlip, TransformEqualsMirrorPadCropInPyTorch) {
  const kd::testing::Reference ref(kd::testing::run_python("augmentation.py") + "/augmentation.json");
  kd::data::RandomShiftFlip aug(kd::data::RandomShiftFlipOptions().max_shift(3));
  const auto out = aug.transform(ref["x"], ref["dy"], ref["dx"], ref["flip"].to(torch::kBool));
  EXPECT_TRUE(torch::equal(out, ref["out"]));
}

TEST(RandomShiftFlip, DrawsStayWithinTheOptionsAndReplayFromTheGenerator) {
  // A single bright pixel in the middle of each image shows the shift that was drawn.
  auto x = torch::zeros({200, 1, 9, 9});
  x.index_put_({torch::indexing::Slice(), 0, 4, 2}, 1.0);  // left of centre, so a mirror shows too
  kd::data::RandomShiftFlip aug(kd::data::RandomShiftFlipOptions().max_shift(2).flip_probability(0.5));
  torch::manual_seed(3);
  auto a = x.clone();
  auto t = torch::zeros({200}, torch::kLong);
  aug.apply(a, t);
  int flipped = 0;
  for (int64_t b = 0; b < 200; ++b) {
    const auto where = a[b][0].nonzero();
    ASSERT_EQ(where.size(0), 1) << "the pixel must stay inside the image for shifts <= 2";
    const int64_t y = where[0][0].item<int64_t>(), col = where[0][1].item<int64_t>();
    EXPECT_LE(std::abs(y - 4), 2);
    const bool mirrored = std::abs(col - (8 - 2)) <= 2;  // mirrored column 6 ± 2, else 2 ± 2
    EXPECT_TRUE(mirrored || std::abs(col - 2) <= 2);
    flipped += mirrored;
  }
  EXPECT_GT(flipped, 60);  // Binomial(200, 0.5): 60..140 holds with overwhelming probability
  EXPECT_LT(flipped, 140);
  torch::manual_seed(3);
  auto b = x.clone();
  aug.apply(b, t);
  EXPECT_TRUE(torch::equal(a, b));
}

TEST(RandomShiftFlip, BadOptionsAndShapesAreRefused) {
  EXPECT_THROW(kd::data::RandomShiftFlip(kd::data::RandomShiftFlipOptions().max_shift(-1)), kd::Error);
  EXPECT_THROW(kd::data::RandomShiftFlip(kd::data::RandomShiftFlipOptions().flip_probability(1.5)), kd::Error);
  kd::data::RandomShiftFlip aug;
  auto flat = torch::zeros({2, 784});
  auto t = torch::zeros({2}, torch::kLong);
  try {
    aug.apply(flat, t);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 784]"), std::string::npos) << e.what();
  }
}
