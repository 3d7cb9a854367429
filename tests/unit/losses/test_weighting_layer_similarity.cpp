// LayerSimilarityWeighting: closed-form cases, PyTorch reference (tests/parity/weighting_layer_similarity.py),
// use as FeatureL2's pair_weighting hook, errors.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/weighting/layer_similarity.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(LayerSimilarityWeighting, SigmoidPrior) {
  EXPECT_DOUBLE_EQ(kd::functional::sigmoid_layer_prior(6), 0.5);
  EXPECT_NEAR(kd::functional::sigmoid_layer_prior(8), 1.0 / (1.0 + std::exp(-1.0)), 1e-15);
  EXPECT_NEAR(kd::functional::sigmoid_layer_prior(0), 1.0 / (1.0 + std::exp(3.0)), 1e-15);
  EXPECT_NEAR(kd::functional::sigmoid_layer_prior(4, /*midpoint=*/2, /*slope=*/1.5), 1.0 / (1.0 + std::exp(-3.0)),
              1e-15);
}

// Features with known cosines: pair 0 s = t (cos 1), pair 1 s = −t (cos −1), pair 2 s ⊥ t (cos 0),
// pair 3 per example cos 1 and cos 0 (mean ½), pair 4 at 60° (cos ½).
struct Known {
  std::vector<torch::Tensor> s, t;
  std::vector<int64_t> layers{2, 4, 6, 8, 10};
};

Known known() {
  Known k;
  const auto e = [](std::vector<double> v) { return torch::tensor(v, torch::kFloat64); };
  const auto t = torch::stack({e({1, 2, 0, 0}), e({0, 0, 3, 1})});  // [2, 4]
  const auto perp = torch::stack({e({2, -1, 0, 0}), e({0, 0, -1, 3})});
  k.t = {t, t, t, t, t};
  k.s = {t * 2.0, -t, perp, torch::stack({t[0], perp[1]}), 0.5 * t + std::sqrt(3.0) / 2 * perp};
  return k;
}

TEST(LayerSimilarityWeighting, ClosedFormRawAndNormalised) {
  const auto k = known();
  const std::vector<double> c{1.0, 0.0 /*clamped*/, 0.0, 0.5, 0.5};
  std::vector<double> raw;
  for (size_t i = 0; i < c.size(); ++i) raw.push_back(c[i] * sigmoid(0.5 * (k.layers[i] - 6.0)));

  kd::LayerSimilarityWeighting raw_w(kd::LayerSimilarityWeightingOptions().normalize(kd::LayerWeightNorm::kNone));
  const auto got_raw = raw_w(k.s, k.t, k.layers);
  ASSERT_EQ(got_raw.numel(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(got_raw[i].item<double>(), raw[i], 1e-12) << i;

  const double sum = raw[0] + raw[3] + raw[4];
  const auto got = kd::LayerSimilarityWeighting()(k.s, k.t, k.layers);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(got[i].item<double>(), 5.0 * raw[i] / sum, 1e-12) << i;
  EXPECT_NEAR(got.sum().item<double>(), 5.0, 1e-12);
  EXPECT_FALSE(got.requires_grad());

  // Without the clamp the anti-aligned pair gets a negative weight.
  kd::LayerSimilarityWeighting signed_w(
      kd::LayerSimilarityWeightingOptions().clamp_negative(false).normalize(kd::LayerWeightNorm::kNone));
  EXPECT_NEAR(signed_w(k.s, k.t, k.layers)[1].item<double>(), -sigmoid(-1.0), 1e-12);

  // Nothing aligned: all weights 1.
  const auto ones = kd::LayerSimilarityWeighting()({k.s[1], k.s[2]}, {k.t[1], k.t[2]}, {3, 9});
  EXPECT_NEAR(ones[0].item<double>(), 1.0, 1e-15);
  EXPECT_NEAR(ones[1].item<double>(), 1.0, 1e-15);
}

TEST(LayerSimilarityWeighting, MatchesPyTorchReference) {
  const kd::testing::Reference ref(kd::testing::run_python("weighting_layer_similarity.py") +
                                   "/weighting_layer_similarity.json");
  const std::vector<torch::Tensor> s{ref["s0"], ref["s1"], ref["s2"]}, t{ref["t0"], ref["t1"], ref["t2"]};
  const std::vector<int64_t> layers{2, 6, 11};
  for (int i = 0; i < 3; ++i) {
    const double c = kd::functional::feature_cosine_similarity(s[i], t[i]).item<double>();
    EXPECT_NEAR(c, ref["c_custom"][i].item<double>(), 1e-12) << i;
  }
  EXPECT_LT(max_rel_error(kd::LayerSimilarityWeighting()(s, t, layers), ref["w_default"]), 1e-12);
  kd::LayerSimilarityWeighting custom(kd::LayerSimilarityWeightingOptions()
                                          .slope(0.8)
                                          .midpoint(3.0)
                                          .clamp_negative(false)
                                          .normalize(kd::LayerWeightNorm::kNone));
  EXPECT_LT(max_rel_error(custom(s, t, layers), ref["w_custom"]), 1e-12);
}

TEST(LayerSimilarityWeighting, DrivesFeatureL2PairWeights) {
  torch::manual_seed(0);
  // Two same-width pairs over teacher layers 1 and 3; the hook sees the resolved indices.
  kd::FeatureL2 feat(kd::FeatureL2Options({{/*teacher=*/1, /*student=*/0}, {/*teacher=*/-1, /*student=*/1}})
                         .pair_weighting(kd::LayerSimilarityWeighting()));
  feat->to(torch::kFloat64);
  kd::DistillBatch b;
  const auto t1 = torch::randn({3, 4}, torch::kFloat64), t3 = torch::randn({3, 4}, torch::kFloat64);
  b.teacher.hidden_states = {torch::randn({3, 4}, torch::kFloat64), t1, torch::randn({3, 4}, torch::kFloat64), t3};
  b.student.hidden_states = {t1 + 0.3 * torch::randn({3, 4}, torch::kFloat64),
                             t3 + 0.6 * torch::randn({3, 4}, torch::kFloat64)};
  const auto r = feat->forward(b);
  const auto w = kd::functional::layer_similarity_weights(b.student.hidden_states, {t1, t3}, {1, 3});
  EXPECT_NEAR(r.parts.at("feat.w0").item<double>(), w[0].item<double>(), 1e-12);
  EXPECT_NEAR(r.parts.at("feat.w1").item<double>(), w[1].item<double>(), 1e-12);
  const double expected = w[0].item<double>() * r.parts.at("feat.0").item<double>() +
                          w[1].item<double>() * r.parts.at("feat.1").item<double>();
  EXPECT_NEAR(r.total.item<double>(), expected, 1e-12);
}

TEST(LayerSimilarityWeighting, Errors) {
  const auto a = torch::ones({2, 3}), b = torch::ones({2, 4});
  try {
    kd::LayerSimilarityWeighting()({a}, {b}, {0});
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("pair 0"));
    EXPECT_THAT(e.what(), HasSubstr("[2, 3]"));
    EXPECT_THAT(e.what(), HasSubstr("[2, 4]"));
  }
  EXPECT_THROW(kd::LayerSimilarityWeighting()({a, a}, {a}, {0, 1}), kd::Error);
  EXPECT_THROW(kd::LayerSimilarityWeighting()({}, {}, {}), kd::Error);
}

}  // namespace
