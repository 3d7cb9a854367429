// TransformerEncoder against a plain-PyTorch float64 reference (tests/parity/transformer.py), plus
// padding invariance, dynamic depth, R1 on token inputs, LoRA layer names, parameter counts and errors.
#include <gtest/gtest.h>

#include "kd/adapters/lora.h"
#include "kd/core/error.h"
#include "kd/core/teacher.h"
#include "kd/losses/gradient_matching.h"
#include "kd/models/transformer_encoder.h"
#include "reference.h"

namespace {
using namespace kd::models;
using kd::testing::kFloat32Atol;
using kd::testing::max_rel_error;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("transformer.py") + "/transformer.json");
  return r;
}

// Copies the reference's parameters into `m` by name; every parameter must be there and no more.
void load(torch::nn::Module& m, const std::string& c) {
  torch::NoGradGuard no_grad;
  int64_t n = 0;
  for (auto& p : m.named_parameters()) {
    ASSERT_TRUE(ref().has(c + ".p." + p.key())) << "reference lacks " << p.key();
    p.value().copy_(ref()[c + ".p." + p.key()]);
    ++n;
  }
  EXPECT_EQ(n, static_cast<int64_t>(ref().scalar(c + ".num_params")));
}

TransformerEncoderOptions parity_options() {
  return TransformerEncoderOptions().vocab(20).d_model(16).heads(2).ffn(24).layers(3).num_classes(3).pad_token(0);
}

TEST(TransformerEncoder, MatchesThePyTorchReferenceInFloat64) {
  TransformerEncoder enc(parity_options());
  enc->to(torch::kFloat64);
  load(*enc, "enc");
  enc->eval();
  const auto out = enc->forward(ref()["enc.tokens"]);
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({3, 3}));
  EXPECT_LT(max_rel_error(out.logits, ref()["enc.logits"]), 1e-10);
  EXPECT_LT(max_rel_error(out.extras.at("pooled"), ref()["enc.pooled"]), 1e-10);
  ASSERT_EQ(out.hidden_states.size(), 3u);
  ASSERT_EQ(out.attentions.size(), 3u);
  for (int l = 0; l < 3; ++l) {
    const auto n = std::to_string(l);
    EXPECT_EQ(out.attentions[l].sizes(), torch::IntArrayRef({3, 2, 7, 7}));
    EXPECT_LT(max_rel_error(out.hidden_states[l], ref()["enc.h" + n]), 1e-10) << "layer " << l;
    EXPECT_LT(max_rel_error(out.attentions[l], ref()["enc.a" + n]), 1e-10) << "layer " << l;
  }
  // The embedding output is differentiable: d(sum(logits·g))/d(embeddings) as autograd in PyTorch gives it.
  const auto& e = out.extras.at("embeddings");
  const auto grad = torch::autograd::grad({(out.logits * ref()["enc.g"]).sum()}, {e})[0];
  EXPECT_LT(max_rel_error(grad, ref()["enc.grad_embeddings"]), 1e-10);
}

TEST(TransformerEncoder, MatchesTheReferenceInFloat32) {
  TransformerEncoder enc(parity_options());
  load(*enc, "enc");
  enc->eval();
  const auto out = enc->forward(ref()["enc.tokens"]);
  EXPECT_LT(max_rel_error(out.logits, ref()["enc.logits"], kFloat32Atol), 1e-5);
  for (int l = 0; l < 3; ++l) {
    EXPECT_LT(max_rel_error(out.hidden_states[l], ref()["enc.h" + std::to_string(l)], kFloat32Atol), 1e-5);
    EXPECT_LT(max_rel_error(out.attentions[l], ref()["enc.a" + std::to_string(l)], kFloat32Atol), 1e-5);
  }
}

TEST(TransformerEncoder, AppendedPaddingLeavesRealPositionsUnchanged) {
  torch::manual_seed(5);
  TransformerEncoder enc(TransformerEncoderOptions().vocab(50).d_model(32).heads(4).layers(2).pad_token(0));
  enc->eval();
  const auto tokens = torch::randint(1, 50, {2, 10}, torch::kInt64);
  const auto padded = torch::cat({tokens, torch::zeros({2, 6}, torch::kInt64)}, 1);
  const auto a = enc->forward(tokens), b = enc->forward(padded);
  EXPECT_LT(max_rel_error(b.logits, a.logits, kFloat32Atol), 1e-5);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_LT(max_rel_error(b.hidden_states[l].slice(1, 0, 10), a.hidden_states[l], kFloat32Atol), 1e-5);
    const auto att = b.attentions[l].slice(2, 0, 10);
    EXPECT_LT(max_rel_error(att.slice(3, 0, 10), a.attentions[l], kFloat32Atol), 1e-5);
    EXPECT_EQ(att.slice(3, 10).abs().max().item<double>(), 0.0);  // padded keys get no attention
  }
  // Without a pad token, the same tokens are ordinary inputs and do change the result.
  TransformerEncoder plain(TransformerEncoderOptions().vocab(50).d_model(32).heads(4).layers(2));
  plain->eval();
  EXPECT_GT((plain->forward(padded).logits - plain->forward(tokens).logits).abs().max().item<double>(), 1e-4);
}

TEST(TransformerEncoder, AllPaddingRowStaysFiniteAndPoolsToZeros) {
  TransformerEncoder enc(TransformerEncoderOptions().vocab(10).d_model(8).heads(2).layers(1).pad_token(0));
  enc->eval();
  const auto out = enc->forward(torch::tensor({1, 2, 3, 0, 0, 0, 0, 0}, torch::kInt64).view({2, 4}));
  EXPECT_TRUE(torch::isfinite(out.hidden_states[0]).all().item<bool>());
  EXPECT_EQ(out.extras.at("pooled")[1].abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::allclose(out.logits[1], enc->head->bias));
}

// Tokens [B, L] whose row b has lengths[b] real tokens (ids 1..) and padding (0) after them.
torch::Tensor padded_batch(const std::vector<int64_t>& lengths, int64_t L) {
  auto t = torch::zeros({static_cast<int64_t>(lengths.size()), L}, torch::kInt64);
  for (size_t b = 0; b < lengths.size(); ++b) t[b].slice(0, 0, lengths[b]).random_(1, 8);
  return t;
}

TEST(TransformerEncoder, DynamicDepthPicksLayersByTheLongestRealLength) {
  const auto o = TransformerEncoderOptions().vocab(8).d_model(8).heads(2).ffn(8).layers(12).max_len(600).pad_token(0)
                     .dropout(0.0).dynamic_depth(true);
  TransformerEncoder enc(o);  // default thresholds: <= 128 -> 4, <= 512 -> 8, else 12
  EXPECT_EQ(enc->depth_for(1), 4);
  EXPECT_EQ(enc->depth_for(128), 4);
  EXPECT_EQ(enc->depth_for(129), 8);
  EXPECT_EQ(enc->depth_for(512), 8);
  EXPECT_EQ(enc->depth_for(513), 12);
  enc->eval();
  // Decided per batch by the longest row, padding not counted: rows of 100 and 20 real tokens in 600.
  auto out = enc->forward(padded_batch({100, 20}, 600));
  EXPECT_EQ(out.hidden_states.size(), 4u);
  EXPECT_EQ(out.attentions.size(), 4u);
  EXPECT_EQ(enc->forward(padded_batch({20, 300}, 600)).hidden_states.size(), 8u);
  EXPECT_EQ(enc->forward(padded_batch({600, 5}, 600)).attentions.size(), 12u);

  // A 4-layer batch is exactly what a static 4-layer encoder with the same weights computes.
  TransformerEncoder four(TransformerEncoderOptions(o).layers(4).dynamic_depth(false));
  {
    torch::NoGradGuard no_grad;
    const auto src = enc->named_parameters();
    for (auto& p : four->named_parameters()) p.value().copy_(src[p.key()]);
  }
  four->eval();
  const auto tokens = padded_batch({100, 60}, 130);
  out = enc->forward(tokens);
  EXPECT_TRUE(torch::allclose(out.logits, four->forward(tokens).logits, 1e-6, 1e-7));

  // Thresholds and depths are options; without a pad token the sequence length counts.
  TransformerEncoder custom(TransformerEncoderOptions().vocab(8).d_model(8).heads(2).layers(3).dynamic_depth(true)
                                .depth_thresholds({10}).depth_layers({1}));
  EXPECT_EQ(custom->forward(torch::ones({1, 10}, torch::kInt64)).hidden_states.size(), 1u);
  EXPECT_EQ(custom->forward(torch::ones({1, 11}, torch::kInt64)).hidden_states.size(), 3u);
  EXPECT_EQ(TransformerEncoder(TransformerEncoderOptions().layers(3))->depth_for(10), 3);  // off: all layers
}

TEST(TransformerEncoder, BadDepthOptionsAreRejected) {
  auto base = TransformerEncoderOptions().d_model(8).heads(2).layers(12).dynamic_depth(true);
  EXPECT_THROW(TransformerEncoder(TransformerEncoderOptions(base).depth_layers({4})), kd::Error);        // 2 vs 1
  EXPECT_THROW(TransformerEncoder(TransformerEncoderOptions(base).depth_thresholds({512, 128})), kd::Error);
  try {
    TransformerEncoder enc(TransformerEncoderOptions(base).layers(6));  // default depths 4, 8: 8 > 6 layers
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
    EXPECT_NE(std::string(e.what()).find("layers = 6"), std::string::npos) << e.what();
  }
}

TEST(TransformerEncoder, EmbeddingsCarryR1GradientMatchingOnTokens) {
  torch::manual_seed(8);
  auto student = std::make_shared<TransformerEncoderImpl>(
      TransformerEncoderOptions().vocab(30).d_model(16).heads(2).layers(2).pad_token(0).dropout(0.0));
  kd::Teacher teacher(std::make_shared<TransformerEncoderImpl>(
      TransformerEncoderOptions().vocab(30).d_model(32).heads(4).layers(3).pad_token(0)));
  kd::DistillBatch batch;
  batch.inputs = padded_batch({9, 6, 12}, 12);
  batch.targets = torch::tensor({0, 1, 1}, torch::kInt64);
  batch.teacher = teacher->forward_with_input_grad(batch.inputs);
  batch.student = student->forward(batch.inputs);
  EXPECT_TRUE(batch.teacher.extras.at("embeddings").requires_grad());  // frozen weights, yet a leaf with grad
  kd::GradientMatching r1(kd::GradientMatchingOptions().input_key("embeddings"));
  const auto r = r1->forward(batch);
  EXPECT_TRUE(std::isfinite(r.total.item<double>()));
  EXPECT_GT(r.parts.at("r1.grad_mse").item<double>(), 0.0);
  r.total.backward();
  EXPECT_GT(student->embed->weight.grad().abs().sum().item<double>(), 0.0);
  for (const auto& p : teacher->model()->parameters()) EXPECT_FALSE(p.grad().defined());
  // Under no-grad (a plain teacher forward) the embeddings are not turned into leaves.
  EXPECT_FALSE(teacher->forward(batch.inputs).extras.at("embeddings").requires_grad());
}

TEST(TransformerEncoder, LoRATargetsQAndVProjectionsByName) {
  auto enc = std::make_shared<TransformerEncoderImpl>(TransformerEncoderOptions().d_model(16).heads(2).layers(2));
  auto lora = kd::lora::apply(enc, kd::lora::Options().rank(2).alpha(4).targets({"q_proj", "v_proj"}));
  EXPECT_EQ(lora->targets(), (std::vector<std::string>{"blocks.0.attn.q_proj", "blocks.0.attn.v_proj",
                                                       "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"}));
}

// V·D + n·(4D² + 2D·F + F + 9D) + 2D + D·C + C, counted from the layer shapes.
int64_t expected_params(int64_t V, int64_t D, int64_t F, int64_t n, int64_t C) {
  const int64_t attention = 4 * (D * D + D), ffn = (D * F + F) + (F * D + D), norms = 2 * 2 * D;
  return V * D + n * (attention + ffn + norms) + 2 * D + (C > 0 ? D * C + C : 0);
}

TEST(TransformerEncoder, ParameterCountsOfTheW2Pair) {
  TransformerEncoder teacher(TransformerEncoderOptions().layers(6).d_model(256).heads(4).ffn(1024));
  TransformerEncoder student(TransformerEncoderOptions().layers(2).d_model(128).heads(2));  // ffn 0 -> 4·128
  EXPECT_EQ(kd::parameter_count(*teacher), expected_params(256, 256, 1024, 6, 2));
  EXPECT_EQ(kd::parameter_count(*student), expected_params(256, 128, 512, 2, 2));
  EXPECT_EQ(kd::parameter_count(*TransformerEncoder(TransformerEncoderOptions().layers(1).num_classes(0))),
            expected_params(256, 256, 1024, 1, 0));
  EXPECT_EQ(student->blocks[0]->as<TransformerBlockImpl>()->fc1->weight.sizes(), torch::IntArrayRef({512, 128}));
}

TEST(TransformerEncoder, NoHeadGivesThePooledOutputAsLogits) {
  TransformerEncoder enc(TransformerEncoderOptions().d_model(16).heads(2).layers(1).num_classes(0));
  const auto out = enc->forward(torch::randint(0, 256, {2, 5}, torch::kInt64));
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 16}));
  EXPECT_TRUE(torch::equal(out.logits, out.extras.at("pooled")));
}

TEST(TransformerEncoder, BadInputsNameTheValueAndTheLimit) {
  TransformerEncoder enc(TransformerEncoderOptions().d_model(16).heads(2).layers(1).max_len(512));
  auto expect_error = [&](const torch::Tensor& t, kd::ErrorCategory cat, const std::vector<std::string>& parts) {
    try {
      enc->forward(t);
      ADD_FAILURE() << "no error for " << t.sizes();
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), cat) << e.what();
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  auto t = torch::randint(0, 256, {2, 8}, torch::kInt64);
  t[1][3] = 300;
  expect_error(t, kd::ErrorCategory::kValue, {"token id 300", "[1, 3]", "vocab 256"});
  t[1][3] = -2;
  expect_error(t, kd::ErrorCategory::kValue, {"token id -2"});
  expect_error(torch::zeros({2, 3, 4}, torch::kInt64), kd::ErrorCategory::kShape, {"[2, 3, 4]", "rank 3"});
  expect_error(torch::zeros({1, 600}, torch::kInt64), kd::ErrorCategory::kShape, {"length 600", "max_len 512"});
  expect_error(torch::zeros({1, 4}), kd::ErrorCategory::kValue, {"Float"});
  EXPECT_EQ(enc->forward(torch::zeros({1, 4}, torch::kInt32)).logits.sizes(), torch::IntArrayRef({1, 2}));
  EXPECT_THROW(TransformerEncoder(TransformerEncoderOptions().d_model(30).heads(4)), kd::Error);
  EXPECT_THROW(TransformerEncoder(TransformerEncoderOptions().pad_token(256)), kd::Error);
}

}  // namespace
