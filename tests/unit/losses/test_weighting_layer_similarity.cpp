// LayerSimilarityWeighting: closed-form cases, PyTorch reference (tests/parity/weighting_layer_similarity.py),
// use as FeatureL2's pair_weighting hook, errors.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/temperature_kl.h"
#include "kd/losses/weighted_sum.h"
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

// mean((s - t)²) over hidden states (student 1, teacher 7): a user loss that is not a LayerFeatureSource.
struct HiddenMSEImpl : torch::nn::Cloneable<HiddenMSEImpl> {
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    kd::LossResult r;
    r.total = (b.student.hidden_states[1] - b.teacher.hidden_states[7]).pow(2).mean();
    return r;
  }
};
TORCH_MODULE(HiddenMSE);

struct PolicyCase {
  kd::testing::Reference ref{kd::testing::run_python("weighting_layer_similarity.py") +
                             "/weighting_layer_similarity_policy.json"};
  kd::FeatureL2 f3{kd::FeatureL2Options({{/*teacher=*/3, /*student=*/0, 1.0, /*student_dim=*/5, /*teacher_dim=*/6}})};
  kd::FeatureL2 f8{kd::FeatureL2Options({{8, 1}, {5, 1}})};
  kd::WeightedSum sum{nullptr};
  std::map<std::string, torch::Tensor> leaves;
  kd::DistillBatch batch;

  explicit PolicyCase(bool dirty = false) {
    f3->to(torch::kFloat64);
    {
      torch::NoGradGuard no_grad;
      f3->projection(0)->weight.copy_(ref["W"]);
      f3->projection(0)->bias.copy_(ref["b"]);
    }
    sum = kd::WeightedSum({{"f3", f3}, {"f8", f8}, {"h7", HiddenMSE()}, {"kl", kd::TemperatureKL(kd::TemperatureKLOptions().temperature(2.0)), 0.5}},
                          kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().layers({{"h7", {/*teacher=*/7, /*student=*/1}}})));
    for (const char* n : {"hs1", "zs"}) leaves[n] = ref[n].clone().requires_grad_(true);
    auto hs0 = ref["hs0"].clone();
    for (int i = 0; i < 9; ++i) batch.teacher.hidden_states.push_back(ref["ht" + std::to_string(i)]);
    if (dirty) {  // NaN / Inf where the mask says padding (example 1 and 3, position 2)
      hs0.index_put_({1, 2}, NAN);
      auto t3 = batch.teacher.hidden_states[3].clone();
      t3.index_put_({3, 2}, INFINITY);
      batch.teacher.hidden_states[3] = t3;
    }
    leaves["hs0"] = hs0.requires_grad_(true);
    batch.student.hidden_states = {leaves["hs0"], leaves["hs1"]};
    batch.student.logits = leaves["zs"];
    batch.teacher.logits = ref["zt"];
    batch.mask = ref["mask"];
  }
};

TEST(LayerSimilarityPolicy, WeighsWeightedSumTermsLikePyTorch) {
  for (bool dirty : {false, true}) {  // dirty: NaN / Inf at padded positions
    SCOPED_TRACE(dirty ? "NaN at padding" : "clean");
    PolicyCase c(dirty);
    const auto r = c.sum->forward(c.batch);
    const std::vector<std::string> weighed{"f3", "f8", "h7"};
    for (int k = 0; k < 3; ++k) {
      EXPECT_LT(max_rel_error(r.parts.at("w." + weighed[k]), c.ref["w"][k]), 1e-12) << weighed[k];
      EXPECT_LT(max_rel_error(r.parts.at("weighting.cos." + weighed[k]), c.ref["cos"][k]), 1e-12) << weighed[k];
      EXPECT_LT(max_rel_error(r.parts.at(weighed[k]), c.ref["L"][k]), 1e-12) << weighed[k];
    }
    EXPECT_EQ(r.parts.at("w.kl").item<double>(), 0.5);  // not weighed: policy weight 1 × term weight 0.5
    EXPECT_EQ(r.parts.count("weighting.cos.kl"), 0u);
    EXPECT_LT(max_rel_error(r.total, c.ref["total"]), 1e-12);
    r.total.backward();
    const std::vector<std::pair<std::string, torch::Tensor>> grads{
        {"hs0", c.leaves["hs0"].grad()}, {"hs1", c.leaves["hs1"].grad()}, {"zs", c.leaves["zs"].grad()},
        {"W", c.f3->projection(0)->weight.grad()}, {"b", c.f3->projection(0)->bias.grad()}};
    for (const auto& [name, g] : grads) {
      ASSERT_TRUE(g.defined()) << name;
      EXPECT_LT(max_rel_error(g, c.ref["g_" + name]), 1e-12) << "gradient of " << name;
    }
  }
}

TEST(LayerSimilarityPolicy, WeightsFollowTheFeaturesEveryStep) {
  // Three steps: as the student's layer-8 features approach the teacher's, f8's weight rises
  // and each step's logged weight is the closed form of that step's features.
  PolicyCase c;
  const auto t8 = c.batch.teacher.hidden_states[8];
  double previous = -1.0;
  for (double blend : {0.0, 0.5, 0.9}) {
    c.batch.student.hidden_states[1] = (1 - blend) * c.leaves["hs1"].detach() + blend * t8;
    const auto r = c.sum->forward(c.batch);
    const auto zero = [&](const torch::Tensor& x) { return x.masked_fill((c.batch.mask == 0).unsqueeze(-1), 0.0); };
    const auto& hs = c.batch.student.hidden_states;
    const auto& ht = c.batch.teacher.hidden_states;
    auto prior = [](double l) { return 1.0 / (1.0 + std::exp(-0.5 * (l - 6.0))); };
    auto cosine = [&](const torch::Tensor& s, const torch::Tensor& t) {
      return kd::functional::feature_cosine_similarity(zero(s), zero(t)).item<double>();
    };
    const auto s0 = zero(torch::linear(zero(hs[0]), c.f3->projection(0)->weight, c.f3->projection(0)->bias));
    const double raw3 = std::max(0.0, cosine(s0, ht[3])) * prior(3);
    const double raw8 = (std::max(0.0, cosine(hs[1], ht[8])) * prior(8) + std::max(0.0, cosine(hs[1], ht[5])) * prior(5)) / 2;
    const double raw7 = std::max(0.0, cosine(hs[1], ht[7])) * prior(7);
    const double sum = raw3 + raw8 + raw7;
    EXPECT_NEAR(r.parts.at("w.f3").item<double>(), 3 * raw3 / sum, 1e-12) << blend;
    EXPECT_NEAR(r.parts.at("w.f8").item<double>(), 3 * raw8 / sum, 1e-12) << blend;
    EXPECT_NEAR(r.parts.at("w.h7").item<double>(), 3 * raw7 / sum, 1e-12) << blend;
    EXPECT_GT(r.parts.at("w.f8").item<double>(), previous) << blend;
    previous = r.parts.at("w.f8").item<double>();
  }
}

TEST(LayerSimilarityPolicy, Errors) {
  PolicyCase c;
  auto expect_error = [&](kd::WeightedSum sum, const kd::DistillBatch& batch, kd::ErrorCategory category,
                          std::vector<std::string> pieces) {
    try {
      sum->forward(batch);
      ADD_FAILURE() << "expected kd::Error containing " << pieces[0];
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), category) << e.what();
      for (const auto& p : pieces) EXPECT_THAT(e.what(), HasSubstr(p));
    }
  };
  auto kl = kd::TemperatureKL(kd::TemperatureKLOptions().temperature(2.0));
  // A layers key that is not a term.
  expect_error(kd::WeightedSum({{"f8", c.f8}, {"h7", HiddenMSE()}},
                               kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().layers({{"h7x", {7, 1}}}))),
               c.batch, kd::ErrorCategory::kConfig, {"'h7x'", "did you mean 'h7'"});
  // Nothing to weigh.
  expect_error(kd::WeightedSum({{"kl", kl}}, kd::LayerSimilarityPolicy()), c.batch, kd::ErrorCategory::kConfig,
               {"none of the terms (kl)"});
  // Hidden states of different widths for a layers term: both shapes.
  expect_error(kd::WeightedSum({{"h7", HiddenMSE()}},
                               kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().layers({{"h7", {7, 0}}}))),
               c.batch, kd::ErrorCategory::kShape, {"[4, 3, 5]", "[4, 3, 6]", "kd::FeatureL2"});
  // A layer index out of range.
  expect_error(kd::WeightedSum({{"h7", HiddenMSE()}},
                               kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().layers({{"h7", {12, 1}}}))),
               c.batch, kd::ErrorCategory::kValue, {"teacher layer index 12", "9 teacher hidden states"});
  // Outside a WeightedSum there is no batch.
  kd::LayerSimilarityPolicy alone;
  EXPECT_THROW(alone->combine({torch::ones({})}, {"a"}, kd::StepInfo{}), kd::Error);
  EXPECT_THROW(kd::LayerSimilarityPolicy(kd::LayerSimilarityPolicyOptions().similarity(
                   kd::LayerSimilarityWeightingOptions().slope(NAN))),
               kd::Error);
}

}  // namespace
