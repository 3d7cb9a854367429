#include <gtest/gtest.h>

#include "kd/kd.h"
#include "kd/models/cnn.h"
#include "reference.h"

namespace {
using namespace kd::models;

TEST(CnnTeacher, ShapesAndParameterCountMatchTheW1Architecture) {
  CnnTeacher t;
  auto out = t->forward(torch::randn({3, 1, 28, 28}));
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({3, 10}));
  ASSERT_EQ(out.hidden_states.size(), 2u);
  EXPECT_EQ(out.hidden_states[0].sizes(), torch::IntArrayRef({3, 32, 14, 14}));
  EXPECT_EQ(out.hidden_states[1].sizes(), torch::IntArrayRef({3, 64, 7, 7}));
  // conv weights + biases, BN affine pairs, two linears.
  const int64_t expected = (1 * 32 * 9 + 32) + 64 + (32 * 32 * 9 + 32) + 64 + (32 * 64 * 9 + 64) + 128 +
                           (64 * 64 * 9 + 64) + 128 + (3136 * 256 + 256) + (256 * 10 + 10);
  EXPECT_EQ(kd::parameter_count(*t), expected);
}

TEST(DepthwiseCnnStudent, ShapesAndParameterCount) {
  DepthwiseCnnStudent s;
  auto out = s->forward(torch::randn({2, 1, 28, 28}));
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 10}));
  EXPECT_EQ(out.hidden_states[1].sizes(), torch::IntArrayRef({2, 32, 7, 7}));
  const int64_t expected = (9 * 16 + 16) + 32 + (16 * 9 + 16) + (16 * 32 + 32) + 64 + (1568 * 10 + 10);
  EXPECT_EQ(kd::parameter_count(*s), expected);
  EXPECT_LT(double(expected) / kd::parameter_count(*CnnTeacher()), 0.05);
  // float32 weights + BN running mean/var (16 + 32 channels each) + two int64 batch counters.
  EXPECT_EQ(kd::parameter_bytes(*s), 4 * expected + 4 * 2 * (16 + 32) + 8 * 2);
}

TEST(Cnn, SpatialAttentionMatchesPyTorch) {
  const kd::testing::Reference ref(kd::testing::run_python("spatial_attention.py") + "/spatial_attention.json");
  const auto a = spatial_attention(ref["x"]);
  EXPECT_EQ(a.sizes(), torch::IntArrayRef({2, 1, 12, 12}));
  EXPECT_LT(kd::testing::max_rel_error(a, ref["attention"]), 1e-12);
  EXPECT_THROW(spatial_attention(torch::randn({2, 3, 4})), kd::Error);
}

TEST(Cnn, AttentionMapsFollowHiddenStatesAndCanBeTurnedOff) {
  CnnTeacher t;
  auto out = t->forward(torch::randn({2, 1, 28, 28}));
  ASSERT_EQ(out.attentions.size(), 2u);
  EXPECT_EQ(out.attentions[0].sizes(), torch::IntArrayRef({2, 1, 196, 196}));
  EXPECT_EQ(out.attentions[1].sizes(), torch::IntArrayRef({2, 1, 49, 49}));
  EXPECT_TRUE(torch::allclose(out.attentions[1], spatial_attention(out.hidden_states[1])));
  DepthwiseCnnStudent s(DepthwiseCnnStudentOptions().attention_maps(false));
  EXPECT_TRUE(s->forward(torch::randn({2, 1, 28, 28})).attentions.empty());
  EXPECT_EQ(DepthwiseCnnStudent()->forward(torch::randn({2, 1, 28, 28})).attentions[1].sizes(),
            torch::IntArrayRef({2, 1, 49, 49}));
}

TEST(Cnn, WrongInputShapeIsAShapeError) {
  DepthwiseCnnStudent s;
  try {
    s->forward(torch::randn({2, 3, 28, 28}));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_NE(std::string(e.what()).find("[2, 3, 28, 28]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(CnnTeacher(CnnTeacherOptions().image_size(30)), kd::Error);
}

}  // namespace
