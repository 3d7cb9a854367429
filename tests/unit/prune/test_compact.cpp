// kd::prune::compact: pruned heads and feed-forward channels removed from transformer blocks. The reference
// is the model before compaction (its pruned units still there as zeros), run on the same tokens; the
// parameter counts are worked out by hand from the layer shapes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/prune/compact.h"
#include "kd/prune/pruning.h"

namespace {
using kd::models::AttentionKind;
using kd::models::TransformerEncoder;
using kd::models::TransformerEncoderOptions;
using kd::prune::Granularity;

TransformerEncoderOptions small(AttentionKind kind) {
  // d_model 16, 4 heads of 4, ffn 24, 2 blocks
  return TransformerEncoderOptions().vocab(20).d_model(16).heads(4).ffn(24).layers(2).num_classes(3).pad_token(0)
      .dropout(0.0).attention(kind);
}

torch::Tensor tokens() {
  torch::manual_seed(7);
  auto t = torch::randint(1, 20, {3, 9}, torch::kLong);
  t.slice(1, 6).select(0, 1).fill_(0);  // padding in one sequence
  return t;
}

void expect_same_outputs(const kd::ModelOutput& a, const kd::ModelOutput& b) {
  EXPECT_TRUE(torch::allclose(a.logits, b.logits, 1e-5, 1e-6)) << (a.logits - b.logits).abs().max();
  ASSERT_EQ(a.hidden_states.size(), b.hidden_states.size());
  for (size_t i = 0; i < a.hidden_states.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a.hidden_states[i], b.hidden_states[i], 1e-5, 1e-5)) << i;
  }
}

// Pruned heads' rows of q/k/v and columns of o_proj go; the kept heads attend exactly as before.
void heads_case(AttentionKind kind) {
  torch::manual_seed(1);
  TransformerEncoder enc(small(kind));
  enc->eval();
  auto pruning = kd::prune::prepare(enc.ptr(), kd::prune::Options().granularity(Granularity::kHead));
  pruning->update(0.5);  // 2 of 4 heads per block
  pruning->apply();
  const auto x = tokens();
  torch::NoGradGuard no_grad;
  const auto before = enc->forward(x);
  const int64_t params = kd::parameter_count(*enc);
  const auto report = kd::prune::compact(*enc);
  ASSERT_EQ(report.blocks.size(), 2u);
  for (const auto& b : report.blocks) {
    EXPECT_EQ(b.heads_before, 4);
    EXPECT_EQ(b.heads_after, 2);
    EXPECT_EQ(b.ffn_after, 24);
  }
  // Per block: q, k, v lose 2·4 = 8 rows of 16 weights + 8 biases; o_proj loses 8 columns of 16.
  EXPECT_EQ(report.parameters_before, params);
  EXPECT_EQ(report.parameters_after, params - 2 * (3 * (8 * 16 + 8) + 16 * 8));
  EXPECT_EQ(kd::parameter_count(*enc), report.parameters_after);
  const auto after = enc->forward(x);
  expect_same_outputs(before, after);
  if (kind == AttentionKind::kSoftmax) {
    // The kept heads' probabilities are the dense layer's, in order.
    for (size_t l = 0; l < 2; ++l) {
      const auto kept = pruning->named_buffers()["mask_blocks_" + std::to_string(l) + "_attn"].nonzero().flatten();
      ASSERT_EQ(after.attentions[l].size(1), 2);
      EXPECT_TRUE(torch::allclose(after.attentions[l], before.attentions[l].index_select(1, kept), 1e-5, 1e-6)) << l;
    }
  }
}

TEST(Compact, RemovesPrunedSoftmaxHeadsWithoutChangingOutputs) { heads_case(AttentionKind::kSoftmax); }
TEST(Compact, RemovesPrunedLinearAttentionHeadsWithoutChangingOutputs) { heads_case(AttentionKind::kLinear); }

TEST(Compact, RemovesPrunedFeedForwardChannelsOfACausalLM) {
  torch::manual_seed(2);
  kd::models::CausalLM lm(kd::models::CausalLMOptions().vocab(20).d_model(12).heads(3).ffn(20).layers(2).dropout(0.0));
  lm->eval();
  auto pruning = kd::prune::prepare(lm.ptr(), kd::prune::Options().granularity(Granularity::kChannel).targets({"fc1"}));
  pruning->update(0.75);  // 15 of 20 channels per block
  pruning->apply();
  const auto x = tokens();
  torch::NoGradGuard no_grad;
  const auto before = lm->forward(x);
  const auto report = kd::prune::compact(*lm);
  for (const auto& b : report.blocks) {
    EXPECT_EQ(b.ffn_before, 20);
    EXPECT_EQ(b.ffn_after, 5);
    EXPECT_EQ(b.heads_after, 3);
  }
  // Per block: fc1 loses 15 rows of 12 weights + 15 biases, fc2 15 columns of 12.
  EXPECT_EQ(report.parameters_after, report.parameters_before - 2 * (15 * 12 + 15 + 12 * 15));
  expect_same_outputs(before, lm->forward(x));
  EXPECT_NE(report.to_string().find("ffn 20 -> 5"), std::string::npos) << report.to_string();
}

TEST(Compact, ACompactedBlockClonesToItsNewShapes) {
  torch::manual_seed(3);
  kd::models::TransformerBlock block(kd::models::TransformerBlockOptions(16, 4, 24));
  block->eval();
  auto pruning = kd::prune::prepare(block.ptr(), kd::prune::Options().granularity(Granularity::kHead));
  pruning->update(0.25);
  pruning->apply();
  kd::prune::compact(*block);
  EXPECT_EQ(block->options.heads(), 3);
  EXPECT_EQ(block->options.head_dim(), 4);
  EXPECT_EQ(block->attn->q_proj->weight.size(0), 12);
  auto copy = std::dynamic_pointer_cast<kd::models::TransformerBlockImpl>(block->clone());
  ASSERT_TRUE(copy);
  const auto x = torch::randn({2, 5, 16});
  const auto rope = kd::models::rotary_tables(5, 4, 10000.0, x.options());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(copy->forward(x, rope).output, block->forward(x, rope).output));
}

TEST(Compact, LeavesAModelWithoutZerosAsItIs) {
  torch::manual_seed(4);
  TransformerEncoder enc(small(AttentionKind::kSoftmax));
  const auto names_before = enc->named_parameters().keys();
  const auto report = kd::prune::compact(*enc);
  EXPECT_FALSE(report.changed());
  EXPECT_EQ(report.parameters_after, report.parameters_before);
  EXPECT_EQ(enc->named_parameters().keys(), names_before);
  // A model without transformer blocks: nothing to do.
  kd::models::DepthwiseCnnStudent cnn;
  EXPECT_TRUE(kd::prune::compact(*cnn).blocks.empty());
}

TEST(Compact, HeadDimOptionIsChecked) {
  EXPECT_THROW(kd::models::MultiHeadSelfAttention(kd::models::MultiHeadSelfAttentionOptions(16, 3).head_dim(5)),
               kd::Error);
  kd::models::MultiHeadSelfAttention three(kd::models::MultiHeadSelfAttentionOptions(16, 3).head_dim(4));
  EXPECT_EQ(three->q_proj->weight.sizes(), (std::vector<int64_t>{12, 16}));
  EXPECT_EQ(three->o_proj->weight.sizes(), (std::vector<int64_t>{16, 12}));
}

}  // namespace
