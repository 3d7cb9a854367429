// CausalLM against a plain-PyTorch float64 reference (tests/parity/transformer.py), causality,
// generation (greedy = argmax unrolled, top-k support, seeds, the max_len window), parameter counts, errors.
#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/core/model.h"
#include "kd/models/causal_lm.h"
#include "reference.h"

namespace {
using namespace kd::models;
using kd::testing::kFloat32Atol;
using kd::testing::max_rel_error;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("transformer.py") + "/transformer.json");
  return r;
}

CausalLMOptions small(int64_t vocab = 40) {
  return CausalLMOptions().vocab(vocab).d_model(24).heads(3).layers(2).max_len(64);
}

// The reference model's architecture with its weights, in `dtype`.
CausalLM reference_model(torch::Dtype dtype) {
  CausalLM lm(CausalLMOptions().vocab(20).d_model(12).heads(3).ffn(20).layers(2).rope_base(100.0));
  lm->to(dtype);
  torch::NoGradGuard no_grad;
  int64_t n = 0;
  for (auto& p : lm->named_parameters()) {
    EXPECT_TRUE(ref().has("lm.p." + p.key())) << "reference lacks " << p.key();
    p.value().copy_(ref()["lm.p." + p.key()]);
    ++n;
  }
  EXPECT_EQ(n, static_cast<int64_t>(ref().scalar("lm.num_params")));
  lm->eval();
  return lm;
}

TEST(CausalLM, MatchesThePyTorchReferenceInFloat64) {
  auto lm = reference_model(torch::kFloat64);
  const auto out = lm->forward(ref()["lm.tokens"]);
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 6, 20}));
  EXPECT_LT(max_rel_error(out.logits, ref()["lm.logits"]), 1e-10);
  ASSERT_EQ(out.hidden_states.size(), 2u);
  ASSERT_EQ(out.attentions.size(), 2u);
  for (int l = 0; l < 2; ++l) {
    EXPECT_LT(max_rel_error(out.hidden_states[l], ref()["lm.h" + std::to_string(l)]), 1e-10) << l;
    EXPECT_LT(max_rel_error(out.attentions[l], ref()["lm.a" + std::to_string(l)]), 1e-10) << l;
  }
  const auto grad = torch::autograd::grad({(out.logits * ref()["lm.g"]).sum()}, {out.extras.at("embeddings")})[0];
  EXPECT_LT(max_rel_error(grad, ref()["lm.grad_embeddings"]), 1e-10);
}

TEST(CausalLM, MatchesTheReferenceInFloat32) {
  auto lm = reference_model(torch::kFloat32);
  const auto out = lm->forward(ref()["lm.tokens"]);
  EXPECT_LT(max_rel_error(out.logits, ref()["lm.logits"], kFloat32Atol), 1e-5);
  for (int l = 0; l < 2; ++l) {
    EXPECT_LT(max_rel_error(out.hidden_states[l], ref()["lm.h" + std::to_string(l)], kFloat32Atol), 1e-5) << l;
    EXPECT_LT(max_rel_error(out.attentions[l], ref()["lm.a" + std::to_string(l)], kFloat32Atol), 1e-5) << l;
  }
}

TEST(CausalLM, LogitsAtTDoNotDependOnLaterTokens) {
  torch::manual_seed(2);
  CausalLM lm(small());
  lm->eval();
  const auto a = torch::randint(0, 40, {2, 12}, torch::kInt64);
  auto b = a.clone();
  b.slice(1, 6).random_(0, 40);
  const auto oa = lm->forward(a), ob = lm->forward(b);
  EXPECT_TRUE(torch::allclose(oa.logits.slice(1, 0, 6), ob.logits.slice(1, 0, 6), 1e-6, 1e-6));
  EXPECT_GT((oa.logits.slice(1, 6) - ob.logits.slice(1, 6)).abs().max().item<double>(), 1e-3);
  for (const auto& att : oa.attentions) {
    EXPECT_EQ(att.sizes(), torch::IntArrayRef({2, 3, 12, 12}));
    EXPECT_EQ(att.triu(1).abs().max().item<double>(), 0.0);  // nothing above the diagonal
    EXPECT_TRUE(torch::allclose(att.sum(-1), torch::ones({2, 3, 12})));
  }
}

// The greedy continuation computed by hand: forward on the whole prefix, argmax of the last position.
torch::Tensor greedy_by_hand(CausalLM& lm, torch::Tensor seq, int64_t steps) {
  torch::NoGradGuard no_grad;
  lm->eval();
  for (int64_t i = 0; i < steps; ++i) {
    const auto next = lm->forward(seq).logits.select(1, -1).argmax(-1, true);
    seq = torch::cat({seq, next}, 1);
  }
  return seq;
}

TEST(CausalLM, GreedyGenerationIsTheArgmaxUnrolled) {
  torch::manual_seed(4);
  CausalLM lm(small());
  const auto prompt = torch::randint(0, 40, {3, 4}, torch::kInt64);
  lm->train();
  const auto g = lm->generate(prompt, 10, GenerateOptions().temperature(0.0));
  EXPECT_TRUE(lm->is_training());  // the mode is restored
  EXPECT_EQ(g.sizes(), torch::IntArrayRef({3, 14}));
  EXPECT_TRUE(torch::equal(g.slice(1, 0, 4), prompt));
  EXPECT_TRUE(torch::equal(g, greedy_by_hand(lm, prompt, 10)));
  // A temperature -> 0 is greedy too; a 1-D prompt gives a 1-D sequence.
  EXPECT_TRUE(torch::equal(lm->generate(prompt, 10, GenerateOptions().temperature(1e-6).seed(3)), g));
  EXPECT_TRUE(torch::equal(lm->generate(prompt[1], 10, GenerateOptions().temperature(0.0)), g[1]));
}

TEST(CausalLM, TopKSamplesStayInTheTopKOfEachStep) {
  torch::manual_seed(6);
  CausalLM lm(small());
  lm->eval();
  const int64_t k = 3, steps = 40;
  const auto seq = lm->generate(torch::randint(0, 40, {4, 2}, torch::kInt64), steps,
                                GenerateOptions().temperature(2.0).top_k(k).seed(9));
  // The model is causal, so one forward over the result gives each step's logits.
  torch::NoGradGuard no_grad;
  const auto logits = lm->forward(seq).logits;
  const auto top = std::get<1>(logits.topk(k, -1));  // [B, L, k]
  int64_t outside = 0, not_argmax = 0;
  for (int64_t t = 2; t < seq.size(1); ++t) {
    const auto tok = seq.select(1, t).unsqueeze(1);
    outside += (top.select(1, t - 1) == tok).any(1).logical_not().sum().item<int64_t>();
    not_argmax += (top.select(1, t - 1).select(1, 0) != seq.select(1, t)).sum().item<int64_t>();
  }
  EXPECT_EQ(outside, 0);
  EXPECT_GT(not_argmax, 20);  // at T = 2 it really samples (not greedy)
}

TEST(CausalLM, SameSeedSameTextAndTheWindowSlidesPastMaxLen) {
  torch::manual_seed(7);
  CausalLM lm(small().max_len(8));
  const auto prompt = torch::randint(0, 40, {2, 10}, torch::kInt64);  // longer than max_len: the last 8 are the window
  const auto a = lm->generate(prompt, 20, GenerateOptions().seed(1));
  EXPECT_TRUE(torch::equal(a, lm->generate(prompt, 20, GenerateOptions().seed(1))));
  EXPECT_FALSE(torch::equal(a, lm->generate(prompt, 20, GenerateOptions().seed(2))));
  const auto g = lm->generate(prompt, 1, GenerateOptions().temperature(0.0));
  lm->eval();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(g.select(1, 10), lm->forward(prompt.slice(1, 2)).logits.select(1, -1).argmax(-1)));
  EXPECT_TRUE(torch::equal(lm->generate(prompt, 0), prompt));
}

// V·D + n·(4D² + 2D·F + F + 9D) + 2D + D·V, counted from the layer shapes.
int64_t expected_params(int64_t V, int64_t D, int64_t n) {
  const int64_t F = 4 * D, attention = 4 * (D * D + D), ffn = (D * F + F) + (F * D + D), norms = 2 * 2 * D;
  return V * D + n * (attention + ffn + norms) + 2 * D + D * V;
}

TEST(CausalLM, ParameterCountsOfTheW3Pair) {
  EXPECT_EQ(kd::parameter_count(*CausalLM()), expected_params(256, 384, 6));  // defaults = W3 teacher
  EXPECT_EQ(kd::parameter_count(*CausalLM(CausalLMOptions().layers(2).d_model(192).heads(3))),
            expected_params(256, 192, 2));
}

TEST(CausalLM, BadInputsNameTheValueAndTheLimit) {
  CausalLM lm(small(40));
  try {
    lm->forward(torch::full({1, 3}, 40, torch::kInt64));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
    EXPECT_NE(std::string(e.what()).find("token id 40"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("vocab 40"), std::string::npos) << e.what();
  }
  try {
    lm->forward(torch::zeros({1, 65}, torch::kInt64));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("length 65 exceeds max_len 64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lm->forward(torch::zeros({4}, torch::kInt64)), kd::Error);
  EXPECT_THROW(lm->generate(torch::zeros({1, 0}, torch::kInt64), 3), kd::Error);
  EXPECT_THROW(lm->generate(torch::zeros({1, 2}, torch::kInt64), -1), kd::Error);
  EXPECT_THROW(lm->generate(torch::full({1, 2}, 99, torch::kInt64), 2), kd::Error);
  EXPECT_THROW(lm->generate(torch::zeros({1, 2}, torch::kInt64), 2, GenerateOptions().temperature(-0.5)), kd::Error);
  EXPECT_THROW(CausalLM(CausalLMOptions().d_model(36).heads(8)), kd::Error);
}

}  // namespace

namespace {

TEST(CausalLM, ByteTextRoundTripsThroughTokenIds) {
  const std::string text = "Subj\xE9" "ct:\n\t~";  // a Latin-1 byte, a newline, a tab, the last printable byte
  const auto ids = kd::models::byte_tokens(text);
  EXPECT_TRUE(torch::equal(ids, torch::tensor({83, 117, 98, 106, 233, 99, 116, 58, 10, 9, 126}, torch::kLong)));
  EXPECT_EQ(kd::models::printable_bytes(ids), "Subj.ct:\n.~");
  EXPECT_EQ(kd::models::printable_bytes(ids.view({1, -1})), "Subj.ct:\n.~");  // any shape, read in order
  EXPECT_EQ(kd::models::byte_tokens("").numel(), 0);
}

}  // namespace
