// AttentionMSE against PyTorch references (tests/parity/attention_mse.py), masking, errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;
using torch::indexing::Slice;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("attention_mse.py") + "/attention_mse.json");
  return r;
}

kd::DistillBatch reference_batch(const torch::Tensor& s0, const torch::Tensor& s1) {
  kd::DistillBatch batch;
  batch.student.attentions = {s0, s1};
  batch.teacher.attentions = {ref()["t0"], ref()["t1"], ref()["t2"]};
  batch.mask = ref()["mask"];
  return batch;
}

TEST(AttentionMSE, EachHeadMappingAndSpaceMatchesPyTorchWithPadding) {
  for (auto mapping : {kd::HeadMapping::kGrouped, kd::HeadMapping::kMean}) {
    for (bool log : {false, true}) {
      const std::string key = std::string(mapping == kd::HeadMapping::kGrouped ? "grouped" : "mean") + (log ? "_log" : "");
      SCOPED_TRACE(key);
      kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}).heads(mapping).log_space(log));
      auto s = ref()["s0"].clone().requires_grad_(true);
      auto r = attn->forward(reference_batch(s, ref()["s1"]));
      EXPECT_LT(max_rel_error(r.total, ref()[key]), 1e-6);
      EXPECT_LT(max_rel_error(r.parts.at("attn"), ref()[key]), 1e-6);
      EXPECT_LT(max_rel_error(r.parts.at("attn.0"), ref()[key]), 1e-6);
      r.total.backward();
      EXPECT_LT(max_rel_error(s.grad(), ref()["g_" + key]), 1e-6);
    }
  }
}

TEST(AttentionMSE, WithoutAMaskEveryElementCounts) {
  kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}));
  auto s = ref()["s0"].clone().requires_grad_(true);
  auto batch = reference_batch(s, ref()["s1"]);
  batch.mask = torch::Tensor();
  auto r = attn->forward(batch);
  EXPECT_LT(max_rel_error(r.total, ref()["nomask"]), 1e-6);
  r.total.backward();
  EXPECT_LT(max_rel_error(s.grad(), ref()["g_nomask"]), 1e-6);
}

TEST(AttentionMSE, RowSumReductionIsEachQueryRowsSquaredDistanceAveragedOverRealRows) {
  kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}).reduction(kd::AttentionReduction::kRowSum));
  for (bool masked : {true, false}) {
    SCOPED_TRACE(masked ? "masked" : "no mask");
    const std::string key = masked ? "rowsum" : "rowsum_nomask";
    auto s = ref()["s0"].clone().requires_grad_(true);
    auto batch = reference_batch(s, ref()["s1"]);
    if (!masked) batch.mask = torch::Tensor();
    auto r = attn->forward(batch);
    EXPECT_LT(max_rel_error(r.total, ref()[key]), 1e-9);
    r.total.backward();
    EXPECT_LT(max_rel_error(s.grad(), ref()["g_" + key]), 1e-9);
  }
  // Unmasked, it is L times the element mean.
  kd::AttentionMSE mean(kd::AttentionMSEOptions({{0, 0}}));
  auto batch = reference_batch(ref()["s0"], ref()["s1"]);
  batch.mask = torch::Tensor();
  EXPECT_NEAR(attn->forward(batch).total.item<double>(), 5 * mean->forward(batch).total.item<double>(), 1e-12);
}

TEST(AttentionMSE, SeveralPairsAreWeightedAndNegativeIndicesCountFromTheEnd) {
  // (teacher 1, student 0): equal head counts, compared head by head; (−1, −1): 4 -> 2 grouped.
  kd::AttentionMSE attn(kd::AttentionMSEOptions({{1, 0, 0.5}, {-1, -1, 2.0}}));
  auto s0 = ref()["s0"].clone().requires_grad_(true);
  auto s1 = ref()["s1"].clone().requires_grad_(true);
  auto r = attn->forward(reference_batch(s0, s1));
  EXPECT_LT(max_rel_error(r.total, ref()["multi_total"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("attn.0"), ref()["multi_l0"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("attn.1"), ref()["multi_l1"]), 1e-6);
  r.total.backward();
  EXPECT_LT(max_rel_error(s0.grad(), ref()["multi_g0"]), 1e-6);
  EXPECT_LT(max_rel_error(s1.grad(), ref()["multi_g1"]), 1e-6);
}

TEST(AttentionMSE, PaddedPositionsDoNotMatterEvenWhenNaN) {
  for (bool log : {false, true}) {
    SCOPED_TRACE(log ? "log" : "prob");
    kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}).log_space(log));
    const double base = attn->forward(reference_batch(ref()["s0"], ref()["s1"])).total.item<double>();
    // Example 1 has padding at positions 3 and 4: change its padded query rows and key columns on both sides.
    auto s = ref()["s0"].clone();
    auto t = ref()["t0"].clone();
    s.index_put_({1, Slice(), 3}, NAN);             // a padded query row, as softmax over all-masked keys gives
    s.index_put_({1, Slice(), Slice(), 4}, 0.9);    // a padded key column
    t.index_put_({1, Slice(), 4}, -3.0);
    t.index_put_({1, Slice(), Slice(), 3}, 0.25);
    s.requires_grad_(true);
    auto batch = reference_batch(s, ref()["s1"]);
    batch.teacher.attentions[0] = t;
    auto r = attn->forward(batch);
    EXPECT_DOUBLE_EQ(r.total.item<double>(), base);
    r.total.backward();
    EXPECT_TRUE(torch::isfinite(s.grad()).all().item<bool>());
    EXPECT_EQ(s.grad().index({1, Slice(), 3}).abs().sum().item<double>(), 0.0);
  }
  // A real position does matter.
  kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}));
  auto s = ref()["s0"].clone();
  const double base = attn->forward(reference_batch(s, ref()["s1"])).total.item<double>();
  s.index_put_({1, 0, 2, 1}, 0.9);
  EXPECT_NE(attn->forward(reference_batch(s, ref()["s1"])).total.item<double>(), base);
}

TEST(AttentionMSE, ExampleMaskDropsWholeExamples) {
  kd::AttentionMSE attn(kd::AttentionMSEOptions({{0, 0}}));
  auto batch = reference_batch(ref()["s0"], ref()["s1"]);
  batch.mask = torch::tensor({1.0, 0.0}, torch::kFloat64);
  const double masked = attn->forward(batch).total.item<double>();
  batch.mask = torch::Tensor();
  batch.student.attentions[0] = ref()["s0"].slice(0, 0, 1);
  batch.teacher.attentions[0] = ref()["t0"].slice(0, 0, 1);
  EXPECT_NEAR(masked, attn->forward(batch).total.item<double>(), 1e-15);
}

TEST(AttentionMSE, BadInputsThrowClearErrors) {
  auto expect_error = [](kd::AttentionMSEOptions options, const kd::DistillBatch& batch, kd::ErrorCategory category,
                         const std::vector<std::string>& pieces) {
    try {
      kd::AttentionMSE attn(std::move(options));
      attn->forward(batch);
      ADD_FAILURE() << "expected kd::Error containing " << pieces[0];
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), category) << e.what();
      for (const auto& piece : pieces) EXPECT_THAT(e.what(), HasSubstr(piece));
    }
  };
  auto batch = reference_batch(ref()["s0"], ref()["s1"]);
  // Out-of-range index: names the index and the number of attention maps.
  expect_error(kd::AttentionMSEOptions({{3, 0}}), batch, kd::ErrorCategory::kValue,
               {"teacher layer index 3", "3 teacher attention maps"});
  expect_error(kd::AttentionMSEOptions({{0, -3}}), batch, kd::ErrorCategory::kValue,
               {"student layer index -3", "2 student attention maps"});
  // Head counts that do not divide under grouped mapping: both shapes, the counts and the fix.
  batch.student.attentions[0] = torch::rand({2, 3, 5, 5}, torch::kFloat64);
  expect_error(kd::AttentionMSEOptions({{0, 0}}), batch, kd::ErrorCategory::kShape,
               {"[2, 3, 5, 5]", "[2, 4, 5, 5]", "3 heads", "has 4", "kMean"});
  // ... which the mean mapping accepts.
  kd::AttentionMSE mean(kd::AttentionMSEOptions({{0, 0}}).heads(kd::HeadMapping::kMean));
  EXPECT_NO_THROW(mean->forward(batch));
  // Sequence lengths differ.
  batch.student.attentions[0] = torch::rand({2, 2, 6, 6}, torch::kFloat64);
  expect_error(kd::AttentionMSEOptions({{0, 0}}), batch, kd::ErrorCategory::kShape, {"[2, 2, 6, 6]", "[2, 4, 5, 5]"});
  // Not [B, H, L, L].
  batch.student.attentions[0] = torch::rand({2, 5, 5}, torch::kFloat64);
  expect_error(kd::AttentionMSEOptions({{0, 0}}), batch, kd::ErrorCategory::kShape, {"[2, 5, 5]", "[2, 4, 5, 5]"});
  // Wrong mask shape.
  batch.student.attentions[0] = ref()["s0"];
  batch.mask = torch::ones({2, 7});
  expect_error(kd::AttentionMSEOptions({{0, 0}}), batch, kd::ErrorCategory::kShape, {"[2, 7]", "[2, 2, 5, 5]"});
  // Non-finite values where the mask counts give a NaN loss (the trainer's non-finite policy decides).
  batch.mask = ref()["mask"];
  auto bad = ref()["s0"].clone();
  bad.index_put_({0, 0, 0, 0}, NAN);
  batch.student.attentions[0] = bad;
  EXPECT_TRUE(std::isnan(kd::AttentionMSE(kd::AttentionMSEOptions({{0, 0}}))->forward(batch).total.item<double>()));

  EXPECT_THROW(kd::AttentionMSE(kd::AttentionMSEOptions(std::vector<kd::LayerPair>{})), kd::Error);
  EXPECT_THROW(kd::AttentionMSE(kd::AttentionMSEOptions().eps(0.0)), kd::Error);
  kd::AttentionMSE defaults;  // last layer vs last layer, grouped heads
  EXPECT_EQ(defaults->options.pairs().size(), 1u);
  EXPECT_EQ(defaults->options.heads(), kd::HeadMapping::kGrouped);
}

}  // namespace
