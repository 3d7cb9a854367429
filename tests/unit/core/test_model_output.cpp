#include <gtest/gtest.h>

#include "kd/kd.h"

namespace {

kd::ModelOutput with_logits(std::vector<int64_t> shape) {
  kd::ModelOutput out;
  out.logits = torch::zeros(shape);
  return out;
}

TEST(ModelOutput, ClassCountMismatchNamesBothShapesAndBothCounts) {
  try {
    kd::check_logits_comparable(with_logits({8, 10}), with_logits({8, 12}));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_NE(msg.find("[8, 10]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[8, 12]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("10 classes, the teacher 12"), std::string::npos) << msg;
  }
}

TEST(ModelOutput, BatchMismatchAndMissingLogits) {
  EXPECT_THROW(kd::check_logits_comparable(with_logits({8, 10}), with_logits({4, 10})), kd::Error);
  try {
    kd::check_logits_comparable(kd::ModelOutput{}, with_logits({4, 10}));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kModel);
    EXPECT_NE(std::string(e.what()).find("student"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(kd::check_logits_comparable(with_logits({2, 5, 7}), with_logits({2, 5, 7})));
}

TEST(ModelOutput, DetachAndToKeepEveryTensor) {
  kd::ModelOutput out;
  out.logits = torch::ones({2, 3}, torch::requires_grad());
  out.hidden_states = {out.logits * 2, out.logits * 3};
  out.attentions = {torch::ones({2, 1, 3, 3})};
  out.extras["emb"] = out.logits + 1;
  auto d = out.detach();
  EXPECT_FALSE(d.logits.requires_grad());
  ASSERT_EQ(d.hidden_states.size(), 2u);
  EXPECT_FALSE(d.hidden_states[1].requires_grad());
  EXPECT_TRUE(torch::equal(d.hidden_states[1], out.hidden_states[1]));
  EXPECT_EQ(d.attentions.size(), 1u);
  EXPECT_FALSE(d.extras.at("emb").requires_grad());
  EXPECT_EQ(out.to(torch::kCPU).batch_size(), 2);
  EXPECT_THROW(kd::ModelOutput{}.batch_size(), kd::Error);
}

TEST(ModelOutput, DetachAndToLeaveUndefinedLayersUndefined) {
  // As a teacher cache returns them: only the layers the losses read are filled.
  kd::ModelOutput out;
  out.logits = torch::ones({2, 3});
  out.hidden_states = {torch::Tensor(), torch::ones({2, 4})};
  out.attentions = {torch::ones({2, 1, 3, 3}), torch::Tensor()};
  for (const auto& moved : {out.to(torch::kCPU), out.detach()}) {
    ASSERT_EQ(moved.hidden_states.size(), 2u);
    EXPECT_FALSE(moved.hidden_states[0].defined());
    EXPECT_TRUE(torch::equal(moved.hidden_states[1], out.hidden_states[1]));
    ASSERT_EQ(moved.attentions.size(), 2u);
    EXPECT_TRUE(moved.attentions[0].defined());
    EXPECT_FALSE(moved.attentions[1].defined());
  }
}

TEST(Device, ParsesSpecsAndRejectsUnknownOnes) {
  EXPECT_EQ(kd::resolve_device("cpu"), torch::Device(torch::kCPU));
  const auto a = kd::resolve_device("auto");
  EXPECT_EQ(a.is_cuda(), torch::cuda::is_available());
  if (!torch::cuda::is_available()) {
    try {
      kd::resolve_device("cuda");
      FAIL();
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), kd::ErrorCategory::kDevice);
      EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(kd::resolve_device("tpu"), kd::Error);
  EXPECT_EQ(kd::parse_dtype("bf16"), torch::kBFloat16);
  EXPECT_EQ(kd::dtype_name(kd::parse_dtype("float64")), "float64");
  EXPECT_THROW(kd::parse_dtype("int3"), kd::Error);
}

}  // namespace
