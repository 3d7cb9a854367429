// LinearSelfAttention against a direct O(L²) evaluation of the same kernel formula in double (explicit
// feature maps, rotation matrices written from RoPE's definition, and weight matrices), its surrogate,
// masks, finite-difference gradients, and the encoder built with it.
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "gradient_check.h"
#include "kd/core/error.h"
#include "kd/models/linear_attention.h"
#include "kd/models/transformer_encoder.h"
#include "reference.h"

namespace {
using kd::models::LinearSelfAttention;
using kd::models::LinearSelfAttentionOptions;
using ::testing::HasSubstr;

torch::Tensor phi(const torch::Tensor& x) { return torch::where(x > 0, x + 1.0, torch::exp(x)); }  // elu(x) + 1

// Position p's rotation of a d-vector: pairs (i, i + d/2) turn by p·base^(−2i/d).
torch::Tensor rotate(const torch::Tensor& x, int64_t p, double base = 10000.0) {
  const int64_t d = x.size(0), h = d / 2;
  auto out = x.clone();
  for (int64_t i = 0; i < h; ++i) {
    const double a = p * std::pow(base, -2.0 * i / d);
    const double xi = x[i].item<double>(), xj = x[i + h].item<double>();
    out[i] = xi * std::cos(a) - xj * std::sin(a);
    out[i + h] = xj * std::cos(a) + xi * std::sin(a);
  }
  return out;
}

struct Direct {
  torch::Tensor output;     // [B, L, D]
  torch::Tensor surrogate;  // [B, H, L, L]
};

// out_i = Σ_j m_j (R_i φ(q_i))ᵀ(R_j φ(k_j)) v_j / (Σ_j m_j φ(q_i)ᵀφ(k_j) + ε), every (i, j) pair spelt out.
Direct direct(LinearSelfAttention& attn, const torch::Tensor& x, const torch::Tensor& mask /* [B, L] 1 = key */) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = attn->options.heads(), d = D / H;
  auto lin = [](const kd::nn::Linear& l, const torch::Tensor& t) { return torch::matmul(t, l->weight.t()) + l->bias; };
  const auto q = lin(attn->q_proj, x), k = lin(attn->k_proj, x), v = lin(attn->v_proj, x);
  auto context = torch::zeros({B, L, D}, x.options());
  auto surrogate = torch::zeros({B, H, L, L}, x.options());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto cols = torch::indexing::Slice(h * d, (h + 1) * d);
      for (int64_t i = 0; i < L; ++i) {
        const auto qi = phi(q.index({b, i, cols}));
        const auto qr = rotate(qi, i);
        auto num = torch::zeros({d}, x.options());
        double den = attn->options.eps();
        std::vector<double> w(L, 0.0);
        for (int64_t j = 0; j < L; ++j) {
          if (mask[b][j].item<double>() == 0) continue;
          const auto kj = phi(k.index({b, j, cols}));
          num += torch::dot(qr, rotate(kj, j)) * v.index({b, j, cols});
          w[j] = torch::dot(qi, kj).item<double>();
          den += w[j];
        }
        context.index_put_({b, i, cols}, num / den);
        for (int64_t j = 0; j < L; ++j) surrogate[b][h][i][j] = w[j] / den;
      }
    }
  }
  return {lin(attn->o_proj, context), surrogate};
}

TEST(LinearAttention, EqualsTheDirectQuadraticEvaluationOfTheKernelFormula) {
  torch::manual_seed(0);
  LinearSelfAttention attn(LinearSelfAttentionOptions(8, 2));
  attn->to(torch::kFloat64);
  const auto x = torch::randn({2, 5, 8}, torch::kFloat64);
  auto mask = torch::ones({2, 5}, torch::kFloat64);
  mask[1].slice(0, 3, 5).fill_(0);  // row 1: the last two keys are padding
  const auto blocked = mask.eq(0).unsqueeze(1).unsqueeze(2);
  const auto got = attn->forward(x, kd::models::rotary_tables(5, 4, 10000.0, x.options()), blocked);
  const auto want = direct(attn, x, mask);
  EXPECT_LT(kd::testing::max_rel_error(got.output, want.output), 1e-10);
  EXPECT_LT(kd::testing::max_rel_error(got.probabilities, want.surrogate), 1e-10);
  // The surrogate is a distribution over the real keys of each query.
  EXPECT_TRUE(torch::allclose(got.probabilities.sum(-1), torch::ones({2, 2, 5}, torch::kFloat64), 1e-5, 1e-5));
  EXPECT_TRUE(got.probabilities.index({1, torch::indexing::Slice(), torch::indexing::Slice(), torch::indexing::Slice(3, 5)})
                  .eq(0)
                  .all()
                  .item<bool>());
  EXPECT_TRUE(got.probabilities.ge(0).all().item<bool>());
}

TEST(LinearAttention, GradientsMatchCentralDifferences) {
  torch::manual_seed(1);
  LinearSelfAttention attn(LinearSelfAttentionOptions(4, 1).surrogate(false));
  attn->to(torch::kFloat64);
  auto x = torch::randn({1, 4, 4}, torch::kFloat64).requires_grad_(true);
  const auto rope = kd::models::rotary_tables(4, 4, 10000.0, x.options());
  const auto w = torch::randn({1, 4, 4}, torch::kFloat64);  // a fixed projection of the output to a scalar
  EXPECT_FALSE(attn->forward(x, rope).probabilities.defined());  // surrogate off
  kd::testing::expect_gradients_match([&] { return (attn->forward(x, rope).output * w).sum(); }, {{"x", x}});
}

TEST(LinearAttention, RefusesPerQueryMasksAndBadShapes) {
  LinearSelfAttention attn(LinearSelfAttentionOptions(8, 2));
  const auto x = torch::randn({1, 4, 8});
  const auto rope = kd::models::rotary_tables(4, 4, 10000.0, x.options());
  const auto causal = torch::ones({4, 4}, torch::kBool).triu(1).view({1, 1, 4, 4});
  kd::testing::expect_kd_error([&] { attn->forward(x, rope, causal); }, kd::ErrorCategory::kValue,
                               {"masks keys only", "[1, 1, 4, 4]", "causal"});
  kd::testing::expect_kd_error([&] { attn->forward(torch::randn({1, 4, 6}), rope); }, kd::ErrorCategory::kShape,
                               {"[B, L, 8]", "[1, 4, 6]"});
  kd::testing::expect_kd_error([] { LinearSelfAttention(LinearSelfAttentionOptions(6, 2)); }, kd::ErrorCategory::kValue,
                               {"even size"});
}

TEST(LinearAttention, HeadSizeIsDModelOverHeadsUnlessHeadDimIsSet) {
  LinearSelfAttention even(LinearSelfAttentionOptions(12, 3));
  EXPECT_EQ(even->head_size(), 4);
  // 3 heads of 6 over d_model 12: the projections are 12 -> 18 -> 12 (what compaction leaves).
  LinearSelfAttention wide(LinearSelfAttentionOptions(12, 3).head_dim(6));
  EXPECT_EQ(wide->head_size(), 6);
  EXPECT_EQ(wide->q_proj->weight.sizes(), (std::vector<int64_t>{18, 12}));
  EXPECT_EQ(wide->o_proj->weight.sizes(), (std::vector<int64_t>{12, 18}));
  const auto x = torch::randn({2, 5, 12});
  EXPECT_EQ(wide->forward(x, kd::models::rotary_tables(5, 6, 10000.0, x.options())).output.sizes(), x.sizes());
  EXPECT_EQ(std::dynamic_pointer_cast<kd::models::LinearSelfAttentionImpl>(wide->clone())->head_size(), 6);
}

TEST(LinearAttention, EncoderKeepsItsParameterNamesAndIgnoresAppendedPadding) {
  auto options = kd::models::TransformerEncoderOptions().layers(2).d_model(16).heads(2).pad_token(0).dropout(0.0);
  torch::manual_seed(2);
  kd::models::TransformerEncoder softmax(options);
  kd::models::TransformerEncoder linear(options.attention(kd::models::AttentionKind::kLinear));
  std::vector<std::string> a, b;
  for (const auto& p : softmax->named_parameters()) a.push_back(p.key());
  for (const auto& p : linear->named_parameters()) b.push_back(p.key());
  EXPECT_EQ(a, b);  // checkpoints, LoRA targets (q_proj, v_proj) and QAT sites read the same
  linear->eval();
  auto tokens = torch::randint(1, 256, {2, 6}, torch::kLong);
  const auto padded = torch::cat({tokens, torch::zeros({2, 3}, torch::kLong)}, 1);
  torch::NoGradGuard no_grad;
  const auto short_out = linear->forward(tokens), long_out = linear->forward(padded);
  EXPECT_TRUE(torch::allclose(short_out.logits, long_out.logits, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(short_out.hidden_states[1], long_out.hidden_states[1].slice(1, 0, 6), 1e-5, 1e-6));
  ASSERT_EQ(long_out.attentions.size(), 2u);
  EXPECT_EQ(long_out.attentions[0].sizes(), (std::vector<int64_t>{2, 2, 9, 9}));
  // Without maps: nothing in `attentions`, the same logits.
  kd::models::TransformerEncoder no_maps(options.attention_maps(false));
  const auto trained = linear->named_parameters();
  for (auto& p : no_maps->named_parameters()) p.value().copy_(trained[p.key()]);
  no_maps->eval();
  const auto o = no_maps->forward(padded);
  EXPECT_TRUE(o.attentions.empty());
  EXPECT_TRUE(torch::allclose(o.logits, long_out.logits, 1e-6, 1e-7));
}

}  // namespace
