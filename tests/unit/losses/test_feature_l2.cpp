// FeatureL2 against PyTorch references (tests/parity/feature_l2.py), finite differences, errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "gradient_check.h"
#include "kd/losses/feature_l2.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("feature_l2.py") + "/feature_l2.json");
  return r;
}

// The pairs of the reference: (teacher 1, student 0) 4 -> 6 linear, (−1, 1) 3 -> 5 1×1 conv, (0, −1) same width.
kd::FeatureL2Options reference_options() {
  return kd::FeatureL2Options({{1, 0, 0.7, 4, 6}, {-1, 1, 1.3, 3, 5}, {0, -1, 0.5}});
}

kd::FeatureL2 reference_module(kd::FeatureL2Options options) {
  kd::FeatureL2 feat(std::move(options));
  feat->to(torch::kFloat64);
  torch::NoGradGuard no_grad;
  feat->projection(0)->weight.copy_(ref()["W0"]);
  feat->projection(0)->bias.copy_(ref()["b0"]);
  feat->projection(1)->weight.copy_(ref()["W1"]);
  feat->projection(1)->bias.copy_(ref()["b1"]);
  return feat;
}

struct Leaves {
  kd::DistillBatch batch;
  std::vector<torch::Tensor> student;
};

Leaves reference_batch() {
  Leaves l;
  for (const char* n : {"hs0", "hs1", "hs2"}) l.student.push_back(ref()[n].clone().requires_grad_(true));
  l.batch.student.hidden_states = l.student;
  l.batch.teacher.hidden_states = {ref()["ht0"], ref()["ht1"], ref()["ht2"], ref()["ht3"]};
  l.batch.mask = ref()["mask"];
  return l;
}

void expect_gradients(const std::string& prefix, const kd::FeatureL2& feat, const Leaves& l) {
  const std::vector<std::pair<std::string, torch::Tensor>> got{
      {"hs0", l.student[0].grad()},          {"hs1", l.student[1].grad()},
      {"hs2", l.student[2].grad()},          {"W0", feat->projection(0)->weight.grad()},
      {"b0", feat->projection(0)->bias.grad()}, {"W1", feat->projection(1)->weight.grad()},
      {"b1", feat->projection(1)->bias.grad()}};
  for (const auto& [name, g] : got) {
    ASSERT_TRUE(g.defined()) << prefix << " " << name;
    EXPECT_LT(max_rel_error(g, ref()[prefix + "_g_" + name]), 1e-6) << prefix << " gradient of " << name;
  }
}

TEST(FeatureL2, MatchesPyTorchForEachNormalisation) {
  const std::vector<std::pair<std::string, kd::FeatureNorm>> modes{
      {"none", kd::FeatureNorm::kNone}, {"l2", kd::FeatureNorm::kL2}, {"standardize", kd::FeatureNorm::kStandardize}};
  for (const auto& [name, mode] : modes) {
    SCOPED_TRACE(name);
    auto feat = reference_module(reference_options().normalize(mode));
    auto l = reference_batch();
    auto r = feat->forward(l.batch);
    EXPECT_LT(max_rel_error(r.total, ref()[name + "_total"]), 1e-6);
    EXPECT_LT(max_rel_error(r.parts.at("feat"), ref()[name + "_total"]), 1e-6);
    for (int i = 0; i < 3; ++i) {
      EXPECT_LT(max_rel_error(r.parts.at("feat." + std::to_string(i)), ref()[name + "_pairs"][i]), 1e-6) << i;
    }
    EXPECT_EQ(r.parts.count("feat.w0"), 0u);
    r.total.backward();
    expect_gradients(name, feat, l);
  }
}

TEST(FeatureL2, PairWeightingHookMultipliesDetachedWeights) {
  std::vector<int64_t> seen_layers;
  // Captured by the hook so its weights carry a graph: FeatureL2 must treat them as constants.
  auto k = torch::ones({}, torch::kFloat64).requires_grad_(true);
  auto hook = [&](const std::vector<torch::Tensor>& s, const std::vector<torch::Tensor>& t,
                  const std::vector<int64_t>& layers) {
    seen_layers = layers;
    std::vector<torch::Tensor> w;
    for (size_t i = 0; i < s.size(); ++i) {
      EXPECT_FALSE(s[i].requires_grad());
      EXPECT_EQ(s[i].sizes(), t[i].sizes());
      const auto cos = torch::cosine_similarity(s[i].reshape({-1}), t[i].reshape({-1}), 0);
      w.push_back((1 + cos) / 2 * (1.0 / (1.0 + std::exp(-0.5 * (layers[i] - 1)))) * k);
    }
    return torch::stack(w);
  };
  auto feat = reference_module(reference_options().pair_weighting(hook));
  auto l = reference_batch();
  auto r = feat->forward(l.batch);
  EXPECT_EQ(seen_layers, (std::vector<int64_t>{1, 3, 0}));  // resolved teacher indices
  EXPECT_LT(max_rel_error(r.total, ref()["hook_total"]), 1e-6);
  for (int i = 0; i < 3; ++i) {
    EXPECT_LT(max_rel_error(r.parts.at("feat.w" + std::to_string(i)), ref()["hook_w"][i]), 1e-6) << i;
  }
  r.total.backward();
  expect_gradients("hook", feat, l);
  EXPECT_FALSE(k.grad().defined());  // no gradient flowed into the weights

  auto wrong = reference_module(reference_options().pair_weighting(
      [](const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&, const std::vector<int64_t>&) {
        return torch::ones({2}, torch::kFloat64);
      }));
  auto l2 = reference_batch();
  try {
    wrong->forward(l2.batch);
    FAIL() << "a hook returning 2 weights for 3 pairs must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("[2]"));
    EXPECT_THAT(e.what(), HasSubstr("3 pairs"));
  }
}

TEST(FeatureL2, AdaptivePoolingMatchesPyTorchAndMismatchIsAnErrorByDefault) {
  kd::DistillBatch batch;
  auto s = ref()["pool_s"].clone().requires_grad_(true);
  batch.student.hidden_states = {s};
  batch.teacher.hidden_states = {ref()["pool_t"]};
  kd::FeatureL2 pooled(kd::FeatureL2Options({{0, 0}}).spatial_mismatch(kd::SpatialMismatch::kAdaptivePool));
  auto r = pooled->forward(batch);
  EXPECT_LT(max_rel_error(r.total, ref()["pool_total"]), 1e-6);
  r.total.backward();
  EXPECT_LT(max_rel_error(s.grad(), ref()["pool_g_s"]), 1e-6);

  kd::FeatureL2 strict(kd::FeatureL2Options({{0, 0}}));
  try {
    strict->forward(batch);
    FAIL() << "spatial mismatch must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("[2, 3, 4, 2]"));
    EXPECT_THAT(e.what(), HasSubstr("[2, 3, 2, 4]"));
    EXPECT_THAT(e.what(), HasSubstr("kAdaptivePool"));
  }
}

TEST(FeatureL2, ProjectionGradientsMatchFiniteDifferencesInDouble) {
  torch::manual_seed(1);
  // A linear pair on [B, L, D] (with a mask) and a 1×1-conv pair on [B, C, H, W], standardised.
  kd::FeatureL2 feat(kd::FeatureL2Options({{0, 0, 0.8, 3, 4}, {1, 1, 1.5, 2, 3}})
                         .init(kd::ProjectionInit::kOrthogonal)
                         .normalize(kd::FeatureNorm::kStandardize));
  feat->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;  // orthogonal init leaves zero bias: make the bias matter
    for (auto& p : feat->parameters()) p.add_(0.1 * torch::randn_like(p));
  }
  kd::DistillBatch batch;
  batch.student.hidden_states = {torch::randn({2, 3, 3}, torch::kFloat64), torch::randn({2, 2, 3, 3}, torch::kFloat64)};
  batch.teacher.hidden_states = {torch::randn({2, 3, 4}, torch::kFloat64), torch::randn({2, 3, 3, 3}, torch::kFloat64)};
  batch.mask = torch::tensor({{1, 1, 0}, {1, 1, 1}}, torch::kFloat64);
  ASSERT_EQ(feat->parameters().size(), 4u);  // both pairs' projection weight and bias
  kd::testing::expect_gradients_match([&] { return feat->forward(batch).total; }, kd::testing::parameters_of(*feat),
                                      1e-6, 1e-6);
}

TEST(FeatureL2, ProjectionsAreRegisteredAtConstructionWithTheChosenInit) {
  kd::FeatureL2 feat(kd::FeatureL2Options({{0, 0, 1.0, 4, 8}, {1, 1}, {2, 2, 1.0, 6, 3}}).init(kd::ProjectionInit::kOrthogonal));
  auto named = feat->named_parameters();
  ASSERT_EQ(named.size(), 4u);  // before any forward: an optimizer built now sees them
  EXPECT_TRUE(named.contains("proj0.weight"));
  EXPECT_TRUE(named.contains("proj2.bias"));
  EXPECT_TRUE(feat->projection(1).is_empty());
  const auto w0 = feat->projection(0)->weight;  // [8, 4]: orthonormal columns
  EXPECT_TRUE(torch::allclose(w0.t().mm(w0), torch::eye(4), 1e-5, 1e-5));
  const auto w2 = feat->projection(2)->weight;  // [3, 6]: orthonormal rows
  EXPECT_TRUE(torch::allclose(w2.mm(w2.t()), torch::eye(3), 1e-5, 1e-5));
  EXPECT_EQ(feat->projection(0)->bias.abs().sum().item<double>(), 0.0);

  kd::FeatureL2 xavier(kd::FeatureL2Options({{0, 0, 1.0, 4, 8}}).init(kd::ProjectionInit::kXavier));
  const double bound = std::sqrt(6.0 / (4 + 8));
  EXPECT_LE(xavier->projection(0)->weight.abs().max().item<double>(), bound);
  EXPECT_EQ(xavier->projection(0)->bias.abs().sum().item<double>(), 0.0);

  torch::manual_seed(5);
  kd::FeatureL2 def(kd::FeatureL2Options({{0, 0, 1.0, 4, 8}}));
  torch::manual_seed(5);
  torch::nn::Linear plain(4, 8);
  EXPECT_TRUE(torch::equal(def->projection(0)->weight, plain->weight));  // LibTorch's own init
  EXPECT_TRUE(torch::equal(def->projection(0)->bias, plain->bias));

  kd::FeatureL2 ident(kd::FeatureL2Options({{0, 0, 1.0, 2, 3}}).init(kd::ProjectionInit::kIdentity));
  kd::DistillBatch batch;
  const auto s = torch::randn({4, 2});
  batch.student.hidden_states = {s};
  batch.teacher.hidden_states = {torch::cat({s, torch::zeros({4, 1})}, 1)};
  EXPECT_NEAR(ident->forward(batch).total.item<double>(), 0.0, 1e-12);

  // clone() is deep: same values, separate storage.
  auto copy = std::dynamic_pointer_cast<kd::FeatureL2Impl>(feat->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(torch::equal(copy->projection(0)->weight, feat->projection(0)->weight));
  {
    torch::NoGradGuard no_grad;
    feat->projection(0)->weight.zero_();
  }
  EXPECT_GT(copy->projection(0)->weight.abs().sum().item<double>(), 0.0);
}

TEST(FeatureL2, MaskedPositionsDoNotMatter) {
  auto feat = reference_module(reference_options());
  auto l = reference_batch();
  const double base = feat->forward(l.batch).total.item<double>();
  // Example 1, position 2 is padding in the reference mask: change it on both sides.
  auto s0 = ref()["hs0"].clone();
  auto t1 = ref()["ht1"].clone();
  s0.index_put_({1, 2}, 100.0);
  t1.index_put_({1, 2}, -50.0);
  l.batch.student.hidden_states[0] = s0;
  l.batch.teacher.hidden_states[1] = t1;
  EXPECT_DOUBLE_EQ(feat->forward(l.batch).total.item<double>(), base);
  // Without the mask the same change does matter.
  l.batch.mask = torch::Tensor();
  EXPECT_GT(std::abs(feat->forward(l.batch).total.item<double>() - base), 1.0);
}

TEST(FeatureL2, NonFiniteValuesAtPaddedPositionsChangeNeitherValueNorGradient) {
  for (auto norm : {kd::FeatureNorm::kNone, kd::FeatureNorm::kL2, kd::FeatureNorm::kStandardize}) {
    SCOPED_TRACE(static_cast<int>(norm));
    auto feat = reference_module(reference_options().normalize(norm));
    auto clean = reference_batch();
    const auto base = feat->forward(clean.batch).total;
    base.backward();
    const auto g_clean = clean.student[0].grad().clone();
    const auto gw_clean = feat->projection(0)->weight.grad().clone();
    feat->zero_grad();

    // Example 1, position 2 is padding: NaN in the student's features (before the projection),
    // +inf and NaN in the teacher's.
    auto dirty = reference_batch();
    auto s0 = ref()["hs0"].clone();
    s0.index_put_({1, 2}, NAN);
    dirty.student[0] = s0.requires_grad_(true);
    dirty.batch.student.hidden_states[0] = dirty.student[0];
    auto t1 = ref()["ht1"].clone();
    t1.index_put_({1, 2, 0}, INFINITY);
    t1.index_put_({1, 2, 1}, NAN);
    dirty.batch.teacher.hidden_states[1] = t1;
    const auto r = feat->forward(dirty.batch);
    EXPECT_EQ(r.total.item<double>(), base.item<double>());
    r.total.backward();
    const auto g = dirty.student[0].grad();
    ASSERT_TRUE(g.defined());
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
    EXPECT_TRUE(torch::equal(g, g_clean));
    EXPECT_TRUE(torch::equal(g[1][2], torch::zeros({4}, torch::kFloat64)));  // no gradient into padding
    EXPECT_TRUE(torch::equal(feat->projection(0)->weight.grad(), gw_clean));

    // The functional form too, on same-width [B, L, D] features.
    const auto a = ref()["ht1"].clone().requires_grad_(true);
    auto a_dirty = ref()["ht1"].clone();
    a_dirty.index_put_({1, 2}, NAN);
    a_dirty.requires_grad_(true);
    const auto b = ref()["ht1"].flip(0).clone();
    const auto m = ref()["mask"];
    const auto v = kd::functional::feature_mse(a, b, norm, m);
    const auto v_dirty = kd::functional::feature_mse(a_dirty, b, norm, m);
    EXPECT_EQ(v_dirty.item<double>(), v.item<double>());
    v.backward();
    v_dirty.backward();
    EXPECT_TRUE(torch::equal(a_dirty.grad(), a.grad()));
  }
  // NaN at a real position makes the loss NaN (the trainer's non-finite policy decides what follows).
  auto feat = reference_module(reference_options());
  auto l = reference_batch();
  auto s0 = ref()["hs0"].clone();
  s0.index_put_({1, 1, 0}, NAN);  // position 1 of example 1 is real
  l.batch.student.hidden_states[0] = s0;
  EXPECT_TRUE(std::isnan(feat->forward(l.batch).total.item<double>()));
}

TEST(FeatureL2, AlignedFeaturesAreWhatForwardCompares) {
  auto feat = reference_module(reference_options());
  auto l = reference_batch();
  const auto aligned = feat->aligned_features(l.batch);
  ASSERT_EQ(aligned.size(), 3u);
  const std::vector<int64_t> teacher_layers{1, 3, 0};
  const auto r = feat->forward(l.batch);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(aligned[i].teacher_layer, teacher_layers[i]) << i;
    EXPECT_FALSE(aligned[i].student.requires_grad());
    ASSERT_EQ(aligned[i].student.sizes(), aligned[i].teacher.sizes()) << i;
    // Pair MSEs recomputed from the aligned features (mean over real positions for the [B, L, D] pair).
    const auto mask = aligned[i].student.dim() == 3 ? ref()["mask"] : torch::Tensor();
    EXPECT_LT(max_rel_error(kd::functional::feature_mse(aligned[i].student, aligned[i].teacher, kd::FeatureNorm::kNone, mask),
                            r.parts.at("feat." + std::to_string(i))),
              1e-12)
        << i;
  }
  // Padding is zero on both sides (pair 0 is [2, 3, 6]; example 1, position 2 is padded).
  EXPECT_EQ(aligned[0].student[1][2].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(aligned[0].teacher[1][2].abs().sum().item<double>(), 0.0);
}

TEST(FeatureL2, NegativeIndicesCountFromTheEnd) {
  kd::DistillBatch batch;
  batch.student.hidden_states = {torch::randn({2, 4}), torch::randn({2, 4})};
  batch.teacher.hidden_states = {torch::randn({2, 4}), torch::randn({2, 4}), torch::randn({2, 4})};
  kd::FeatureL2 neg(kd::FeatureL2Options({{-1, -2}}));
  kd::FeatureL2 pos(kd::FeatureL2Options({{2, 0}}));
  EXPECT_EQ(neg->forward(batch).total.item<double>(), pos->forward(batch).total.item<double>());
}

TEST(FeatureL2, BadInputsThrowClearErrors) {
  kd::DistillBatch batch;
  batch.student.hidden_states = {torch::randn({4, 2}), torch::randn({4, 3, 5})};
  batch.teacher.hidden_states = {torch::randn({4, 1}), torch::randn({4, 6}), torch::randn({4, 3, 7})};

  auto expect_error = [&](kd::FeatureL2Options options, kd::ErrorCategory category,
                          const std::vector<std::string>& pieces) {
    try {
      kd::FeatureL2 feat(std::move(options));
      feat->forward(batch);
      ADD_FAILURE() << "expected kd::Error containing " << pieces[0];
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), category) << e.what();
      for (const auto& piece : pieces) EXPECT_THAT(e.what(), HasSubstr(piece));
    }
  };
  // Out-of-range indices name the index and the number of hidden states.
  expect_error(kd::FeatureL2Options({{7, 0}}), kd::ErrorCategory::kValue, {"teacher layer index 7", "3 teacher hidden states"});
  expect_error(kd::FeatureL2Options({{0, -3}}), kd::ErrorCategory::kValue, {"student layer index -3", "2 student hidden states"});
  // Widths differ and no projection configured: both shapes and the fix.
  expect_error(kd::FeatureL2Options({{0, 0}}), kd::ErrorCategory::kShape, {"[4, 2]", "[4, 1]", "student_dim"});
  // student_dim disagrees with the feature.
  expect_error(kd::FeatureL2Options({{1, 0, 1.0, 3, 6}}), kd::ErrorCategory::kShape, {"[4, 2]", "student_dim is 3"});
  // teacher_dim disagrees with the teacher's feature.
  expect_error(kd::FeatureL2Options({{2, 1, 1.0, 5, 6}}), kd::ErrorCategory::kShape, {"[4, 3, 6]", "[4, 3, 7]", "teacher_dim is 6"});
  // Ranks differ.
  expect_error(kd::FeatureL2Options({{1, 1, 1.0, 5, 6}}), kd::ErrorCategory::kShape, {"[4, 3, 6]", "[4, 6]"});
  // A mask that does not fit [B, L, D] features.
  batch.mask = torch::ones({4, 9});
  expect_error(kd::FeatureL2Options({{2, 1, 1.0, 5, 7}}), kd::ErrorCategory::kShape, {"[4, 9]", "[4, 3, 7]"});
  batch.mask = torch::Tensor();
  // Batch sizes differ.
  batch.teacher.hidden_states[1] = torch::randn({3, 2});
  expect_error(kd::FeatureL2Options({{1, 0}}), kd::ErrorCategory::kShape, {"[4, 2]", "[3, 2]"});

  EXPECT_THROW(kd::FeatureL2{kd::FeatureL2Options()}, kd::Error);                           // no pairs
  EXPECT_THROW(kd::FeatureL2(kd::FeatureL2Options({{0, 0, 1.0, 2, 0}})), kd::Error);       // one width only
  EXPECT_THROW(kd::FeatureL2(kd::FeatureL2Options({{0, 0, -1.0}})), kd::Error);            // negative weight
}

}  // namespace
