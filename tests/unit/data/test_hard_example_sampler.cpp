#include <cmath>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/hard_example_sampler.h"

namespace {
using namespace kd::data;

TEST(PredictiveEntropy, ClosedForms) {
  auto logits = torch::tensor({{0.0, 0.0, 0.0, 0.0}, {100.0, 0.0, 0.0, 0.0}, {std::log(3.0), 0.0, 0.0, 0.0}},
                              torch::kFloat64);
  auto h = predictive_entropy(logits);
  EXPECT_NEAR(h[0].item<double>(), std::log(4.0), 1e-12);
  EXPECT_NEAR(h[1].item<double>(), 0.0, 1e-12);
  // p = (1/2, 1/6, 1/6, 1/6): H = ½ln2 + ½ln6
  EXPECT_NEAR(h[2].item<double>(), 0.5 * std::log(2.0) + 0.5 * std::log(6.0), 1e-12);
  // High temperature flattens any distribution towards log C.
  EXPECT_NEAR(predictive_entropy(logits, 1e6)[1].item<double>(), std::log(4.0), 1e-3);
  EXPECT_NEAR(disagreement(logits, logits).abs().max().item<double>(), 0.0, 1e-12);
  EXPECT_THROW(predictive_entropy(torch::zeros({3})), kd::Error);
}

// Sequences [N, L, C]: a sequence's score is the mean of its tokens', over the tokens its mask keeps.
TEST(PredictiveEntropy, SequencesScoreTheMeanOfTheirMaskedTokens) {
  const double u = 0.0, peak = 100.0;
  // Sequence 0: two uniform tokens (ln 4 each), then a certain one (0). Sequence 1: certain, then uniform.
  auto logits = torch::tensor({{{u, u, u, u}, {u, u, u, u}, {peak, u, u, u}},
                               {{peak, u, u, u}, {u, u, u, u}, {u, u, u, u}}},
                              torch::kFloat64);
  auto h = predictive_entropy(logits);
  ASSERT_EQ(h.sizes(), torch::IntArrayRef({2}));
  EXPECT_NEAR(h[0].item<double>(), 2.0 / 3.0 * std::log(4.0), 1e-12);
  EXPECT_NEAR(h[1].item<double>(), 2.0 / 3.0 * std::log(4.0), 1e-12);
  // Sequence 0 without its last token: ln 4; sequence 1 with its first token only: 0; no token at all: 0.
  auto mask = torch::tensor({{1, 1, 0}, {1, 0, 0}}, torch::kBool);
  auto hm = predictive_entropy(logits, 1.0, mask);
  EXPECT_NEAR(hm[0].item<double>(), std::log(4.0), 1e-12);
  EXPECT_NEAR(hm[1].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(predictive_entropy(logits, 1.0, torch::zeros({2, 3}))[0].item<double>(), 0.0, 1e-12);
  // Disagreement: the same logits give 0 everywhere. A student certain (logits (100, 0, 0, 0)) where the teacher
  // is uniform: KL = Σ_c ¼(ln ¼ − ln p_s,c) = ln ¼ + ¾·100 + ln(1 + 3e⁻¹⁰⁰) on that token, 0 on the others.
  EXPECT_NEAR(disagreement(logits, logits).abs().max().item<double>(), 0.0, 1e-12);
  auto student = logits.clone();
  student[0][0] = torch::tensor({peak, u, u, u}, torch::kFloat64);  // certain where the teacher is uniform
  const double kl = std::log(0.25) + 0.75 * peak + std::log1p(3 * std::exp(-peak));
  EXPECT_NEAR(disagreement(student, logits)[0].item<double>(), kl / 3.0, 1e-9);
  EXPECT_NEAR(disagreement(student, logits, 1.0, mask)[0].item<double>(), kl / 2.0, 1e-9);
  EXPECT_THROW(predictive_entropy(logits, 1.0, torch::ones({2, 2})), kd::Error);
}

TEST(HardExampleSampler, FavoursHighScoresInTheStatedProportion) {
  const int64_t n = 1000;
  auto scores = torch::full({n}, 0.1, torch::kFloat64);
  scores.slice(0, 0, 100).fill_(9.9);  // 10% of the examples are "hard"
  HardExampleSampler sampler(n, HardExampleSamplerOptions().mix(0.5).floor(1e-9).seed(3));
  sampler.set_scores(scores);
  // Probability mass on the hard ones: 100·9.9 / (100·9.9 + 900·0.1) = 990/1080.
  EXPECT_NEAR(sampler.probabilities().slice(0, 0, 100).sum().item<double>(), 990.0 / 1080.0, 1e-9);
  auto order = sampler.epoch_order(0);
  ASSERT_EQ(order.size(), static_cast<size_t>(n));
  int64_t hard = 0;
  for (auto i : order) hard += i < 100;
  // Expected: uniform half 500·0.1 = 50, hard half 500·990/1080 ≈ 458 → ≈ 508 (vs 100 without mining).
  EXPECT_NEAR(double(hard), 50.0 + 500.0 * 990.0 / 1080.0, 40.0);
  EXPECT_EQ(sampler.epoch_order(0), order);   // deterministic
  EXPECT_NE(sampler.epoch_order(1), order);   // new draw each epoch
}

TEST(HardExampleSampler, MixZeroIsAPermutationAndBadInputIsRejected) {
  HardExampleSampler sampler(50, HardExampleSamplerOptions().mix(0.0));
  auto order = sampler.epoch_order(2);
  std::set<int64_t> unique(order.begin(), order.end());
  EXPECT_EQ(unique.size(), 50u);
  EXPECT_THROW(sampler.set_scores(torch::ones({49})), kd::Error);
  EXPECT_THROW(sampler.set_scores(torch::full({50}, -1.0)), kd::Error);
  EXPECT_THROW(sampler.set_scores(torch::full({50}, NAN)), kd::Error);
  EXPECT_THROW(HardExampleSampler(10, HardExampleSamplerOptions().mix(1.5)), kd::Error);
}

}  // namespace
