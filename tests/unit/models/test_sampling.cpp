// TokenSampler: greedy, temperature and top-k distributions checked by frequencies over many seeded draws.
#include <set>

#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/models/sampling.h"

namespace {
using namespace kd::models;

const torch::Tensor kLogits = torch::tensor({0.3, 2.0, -1.0, 1.5, 0.0, 1.9, -3.0, 0.7}, torch::kFloat64);

// Frequencies of each id among `draws` samples of kLogits (one call over many identical rows).
torch::Tensor frequencies(const GenerateOptions& o, int64_t draws) {
  TokenSampler sampler(o);
  const auto ids = sampler.sample(kLogits.repeat({draws, 1}));
  EXPECT_EQ(ids.sizes(), torch::IntArrayRef({draws}));
  return torch::bincount(ids, {}, kLogits.size(0)).to(torch::kFloat64) / static_cast<double>(draws);
}

TEST(TokenSampler, GreedyIsArgmaxWithTheLowestIdAmongTies) {
  TokenSampler greedy(GenerateOptions().temperature(0.0));
  EXPECT_EQ(greedy.sample(kLogits).item<int64_t>(), 1);
  EXPECT_EQ(greedy.sample(torch::tensor({1.0, 3.0, 3.0, 2.0})).item<int64_t>(), 1);
  const auto rows = torch::stack({kLogits, -kLogits}).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(greedy.sample(rows), torch::tensor({1, 6}, torch::kInt64)));
  // A temperature near 0 concentrates everything on the argmax (gaps here are >= 0.1).
  EXPECT_TRUE(torch::equal(frequencies(GenerateOptions().temperature(1e-4).seed(5), 2000),
                           torch::one_hot(torch::tensor(int64_t{1}), 8).to(torch::kFloat64)));
}

TEST(TokenSampler, FullDistributionFollowsTheTemperedSoftmax) {
  const int64_t n = 40000;  // standard error of a frequency <= 0.0025
  for (double T : {1.0, 2.5}) {
    const auto expected = torch::softmax(kLogits / T, 0);
    const auto f = frequencies(GenerateOptions().temperature(T).seed(11), n);
    EXPECT_LT((f - expected).abs().max().item<double>(), 0.012) << "T=" << T << "\n" << f << "\n" << expected;
  }
  // top_k >= V is the full distribution too.
  const auto f = frequencies(GenerateOptions().top_k(100).seed(12), n);
  EXPECT_LT((f - torch::softmax(kLogits, 0)).abs().max().item<double>(), 0.012);
}

TEST(TokenSampler, TopKNeverLeavesTheKHighestAndRenormalisesAmongThem) {
  const int64_t n = 40000;
  for (int64_t k : {1, 3}) {
    const auto f = frequencies(GenerateOptions().temperature(1.5).top_k(k).seed(21), n);
    // The k highest logits of kLogits: 2.0 (id 1), 1.9 (id 5), 1.5 (id 3).
    const std::vector<int64_t> top = {1, 5, 3};
    auto kept = torch::zeros({8}, torch::kBool);
    for (int64_t j = 0; j < k; ++j) kept[top[j]] = true;
    EXPECT_EQ(f.masked_select(kept.logical_not()).sum().item<double>(), 0.0) << "k=" << k << "\n" << f;
    auto z = kLogits.masked_fill(kept.logical_not(), -std::numeric_limits<double>::infinity());
    EXPECT_LT((f - torch::softmax(z / 1.5, 0)).abs().max().item<double>(), 0.012) << "k=" << k;
  }
  // Ties at the k-th place go to the lower id.
  TokenSampler tie(GenerateOptions().top_k(2).seed(1));
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(tie.sample(torch::tensor({4.0, 5.0, 4.0, 4.0})).item<int64_t>());
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));
}

TEST(TokenSampler, SameSeedSameDrawsOtherSeedOtherDraws) {
  const auto rows = torch::zeros({64, 50});  // uniform over 50 ids
  const auto a = TokenSampler(GenerateOptions().seed(7)).sample(rows);
  const auto b = TokenSampler(GenerateOptions().seed(7)).sample(rows);
  const auto c = TokenSampler(GenerateOptions().seed(8)).sample(rows);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  EXPECT_GE(std::get<0>(torch::_unique(a)).numel(), 20);  // 64 uniform draws over 50 ids are not all alike
}

TEST(TokenSampler, BadOptionsAndLogitsAreValueErrors) {
  EXPECT_THROW(TokenSampler(GenerateOptions().temperature(-1.0)), kd::Error);
  EXPECT_THROW(TokenSampler(GenerateOptions().top_k(-2)), kd::Error);
  TokenSampler s;
  try {
    s.sample(torch::tensor({0.0, std::nan(""), 1.0}));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
    EXPECT_NE(std::string(e.what()).find("logit 1 of row 0 is NaN"), std::string::npos) << e.what();
  }
  EXPECT_THROW(s.sample(torch::full({3}, -std::numeric_limits<double>::infinity())), kd::Error);
  EXPECT_THROW(s.sample(torch::zeros({2, 3, 4})), kd::Error);
}

}  // namespace
