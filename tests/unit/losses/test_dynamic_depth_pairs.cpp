// FeatureL2 and AttentionMSE against a student with dynamic depth (a 2-layer TransformerEncoder that runs
// 1 layer for inputs of at most 4 real tokens): at every depth the thresholds allow, the pairs whose student
// layer ran give the loss a pair-by-pair copy of them gives, the others are skipped for that batch, a batch
// that runs no pair still back-propagates (a zero), and an index beyond the whole depth is still refused.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/models/transformer_encoder.h"

namespace {
using ::testing::HasSubstr;

constexpr int64_t kPad = 0;

kd::models::TransformerEncoder student() {
  torch::manual_seed(5);
  return kd::models::TransformerEncoder(kd::models::TransformerEncoderOptions()
                                            .d_model(16)
                                            .heads(2)
                                            .layers(2)
                                            .dropout(0.0)
                                            .pad_token(kPad)
                                            .dynamic_depth(true)
                                            .depth_thresholds({4})
                                            .depth_layers({1}));
}

// Tokens [2, 8]: `real` non-padding tokens per row.
torch::Tensor tokens(int64_t real) {
  auto t = torch::full({2, 8}, kPad, torch::kInt64);
  t.slice(1, 0, real).fill_(7);
  return t;
}

// A teacher output with two layers of features and attention maps shaped like the student's.
kd::ModelOutput teacher_like(const torch::Tensor& x) {
  torch::manual_seed(9);
  kd::ModelOutput t;
  for (int i = 0; i < 2; ++i) {
    t.hidden_states.push_back(torch::randn({x.size(0), x.size(1), 16}));
    t.attentions.push_back(torch::softmax(torch::randn({x.size(0), 2, x.size(1), x.size(1)}), -1));
  }
  return t;
}

kd::DistillBatch batch_of(kd::models::TransformerEncoder& model, const torch::Tensor& x) {
  kd::DistillBatch b;
  b.student = model->forward(x);
  b.teacher = teacher_like(x);
  b.mask = x.ne(kPad);
  return b;
}

TEST(DynamicDepthPairs, EachDepthScoresThePairsWhoseStudentLayerRan) {
  auto model = student();
  const std::vector<kd::LayerPair> both{{0, 0}, {1, 1, 0.5}};
  for (const int64_t real : {3, 4, 5, 8}) {  // 1, 1, 2, 2 layers
    SCOPED_TRACE(real);
    const bool deep = real > 4;
    auto b = batch_of(model, tokens(real));
    ASSERT_EQ(b.student.hidden_states.size(), deep ? 2u : 1u);
    EXPECT_EQ(kd::skipped_layers(b.student), deep ? 0 : 1);

    auto feat = kd::FeatureL2(kd::FeatureL2Options(both));
    auto attn = kd::AttentionMSE(kd::AttentionMSEOptions().pairs(both));
    const auto f = feat->forward(b), a = attn->forward(b);
    // The reference: the pairs that ran, each in a loss of its own, weighted by hand.
    auto only = [&](const kd::LayerPair& p) {
      return std::make_pair(kd::FeatureL2(kd::FeatureL2Options({p}))->forward(b).total,
                            kd::AttentionMSE(kd::AttentionMSEOptions().pairs({p}))->forward(b).total);
    };
    auto [f0, a0] = only({0, 0, 1.0});
    torch::Tensor f_want = f0, a_want = a0;
    if (deep) {
      auto [f1, a1] = only({1, 1, 1.0});
      f_want = f_want + 0.5 * f1;
      a_want = a_want + 0.5 * a1;
    }
    EXPECT_TRUE(torch::allclose(f.total, f_want, 1e-6, 1e-7));
    EXPECT_TRUE(torch::allclose(a.total, a_want, 1e-6, 1e-7));
    EXPECT_EQ(f.parts.count("feat.1"), deep ? 1u : 0u);
    EXPECT_EQ(a.parts.count("attn.1"), deep ? 1u : 0u);
  }
}

TEST(DynamicDepthPairs, ABatchThatRunsNoPairStillBackPropagatesAZero) {
  auto model = student();
  auto b = batch_of(model, tokens(2));  // one layer runs; the only pair matches the second (−1: the last)
  auto feat = kd::FeatureL2(kd::FeatureL2Options({{-1, -1}}));
  auto attn = kd::AttentionMSE(kd::AttentionMSEOptions().pairs({{1, 1}}));
  const auto f = feat->forward(b), a = attn->forward(b);
  EXPECT_EQ(f.total.item<double>(), 0.0);
  EXPECT_EQ(a.total.item<double>(), 0.0);
  (f.total + a.total).backward();
  for (const auto& p : model->parameters()) {
    if (p.grad().defined()) EXPECT_EQ(p.grad().abs().max().item<double>(), 0.0);
  }
}

TEST(DynamicDepthPairs, AnIndexBeyondTheWholeDepthIsStillRefused) {
  auto model = student();
  auto b = batch_of(model, tokens(2));
  try {
    kd::FeatureL2(kd::FeatureL2Options({{0, 2}}))->forward(b);
    FAIL() << "student layer 2 of a 2-layer student was accepted";
  } catch (const kd::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("student layer index 2 is out of range for the 2 student hidden states"));
  }
}

}  // namespace
