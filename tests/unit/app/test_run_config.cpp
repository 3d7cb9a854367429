// kd-train's typed config: every section of a resolved tree read into its struct (the values set here with
// --set, read back from the fields), what only the parser can refuse, and derived configs parsed again.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config.h"
#include "kd/core/error.h"
#include "run_config.h"
#include "task.h"

namespace {
using kd::app::parse_run_config;
using kd::app::resolve_config;
using ::testing::HasSubstr;

std::string error_of(const std::vector<std::string>& sets) {
  try {
    parse_run_config(resolve_config({}, sets));
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
    return e.what();
  }
  ADD_FAILURE() << "expected kd::Error";
  return "";
}

TEST(RunConfig, EverySectionIsReadIntoItsFields) {
  const auto c = parse_run_config(resolve_config(
      {}, {"task=spam", "out=\"runs/x\"", "data.limit=40", "data.eval_limit=12", "data.max_len=64", "data.split_seed=3",
           "data.student_labels=0.5", "teacher.epochs=5", "teacher.steps=7", "teacher.path=\"t.pt\"",
           "teacher.cache.enabled=true", "teacher.cache.top_k=4", "teacher.cache.dtype=\"bfloat16\"",
           "teacher.layers=3", "teacher.d_model=48", "student.attention=\"linear\"", "student.dynamic_depth=true",
           "student.depth_thresholds=[32,96]", "student.depth_layers=[1,2]", "student.heads=4",
           "evaluation.ece_bins=7", "evaluation.best_metric=\"macro_f1\"", "train.batch_size=9", "train.lr=0.25",
           "train.seed=11", "train.threads=3", "train.device=\"cpu\"", "train.precision=\"bf16\"",
           "train.optimizer=\"sgd\"", "train.momentum=0.8", "train.accumulation=2", "train.ema_decay=0.99",
           "train.nonfinite=\"stop\"", "train.tensorboard=\"none\"", "train.augment=\"token_mix\"",
           "train.adversarial_epsilon=0.1", "lora.rank=3", "lora.targets=[\"q_proj\"]", "qat.exclude=[\"^head$\"]",
           "prune.granularity=\"head\"", "prune.end=0.25", "stages.2.hooks=[\"qat\"]",
           "stages.1.weighting={\"policy\": \"uncertainty\", \"init_log_var\": 0.5}"}));
  EXPECT_EQ(c.task->name(), "spam");
  EXPECT_EQ(c.out, "runs/x");
  EXPECT_EQ(c.data.limit, 40);
  EXPECT_EQ(c.data.eval_limit, 12);
  EXPECT_EQ(c.data.max_len, 64);
  EXPECT_EQ(c.data.split_seed, 3u);
  EXPECT_EQ(c.data.student_labels, 0.5);
  EXPECT_EQ(c.teacher.epochs, 5);
  EXPECT_EQ(c.teacher.steps, 7);
  EXPECT_EQ(c.teacher.path, "t.pt");
  EXPECT_TRUE(c.teacher.cache.enabled);
  EXPECT_EQ(c.teacher.cache.top_k, 4);
  EXPECT_EQ(c.teacher.cache.dtype, torch::kBFloat16);
  EXPECT_EQ(c.teacher.shape.layers, 3);
  EXPECT_EQ(c.teacher.shape.d_model, 48);
  EXPECT_EQ(c.student.attention, kd::models::AttentionKind::kLinear);
  EXPECT_TRUE(c.student.dynamic_depth);
  EXPECT_EQ(c.student.depth_thresholds, (std::vector<int64_t>{32, 96}));
  EXPECT_EQ(c.student.depth_layers, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c.student.heads, 4);
  EXPECT_EQ(c.evaluation.ece_bins, 7);
  EXPECT_EQ(c.evaluation.best_metric, "macro_f1");
  EXPECT_FALSE(c.generate.has_value());  // spam has no "generate" section
  EXPECT_EQ(c.train.batch_size, 9);
  EXPECT_EQ(c.train.lr, 0.25);
  EXPECT_EQ(c.train.seed, 11u);
  EXPECT_EQ(c.train.threads, 3);
  EXPECT_EQ(c.train.device, "cpu");
  EXPECT_EQ(c.train.precision, kd::Precision::kBFloat16);
  EXPECT_EQ(c.train.tensorboard, "none");
  EXPECT_EQ(c.train.trainer.optimizer(), kd::OptimizerKind::kSgd);
  EXPECT_EQ(c.train.trainer.momentum(), 0.8);
  EXPECT_EQ(c.train.trainer.accumulation(), 2);
  EXPECT_EQ(c.train.trainer.ema_decay(), 0.99);
  EXPECT_EQ(c.train.trainer.nonfinite(), kd::NonFinitePolicy::kStop);
  EXPECT_TRUE(c.train.trainer.augmentation() != nullptr);  // token_mix, made by the spam task
  EXPECT_EQ(c.train.trainer.adversarial().epsilon(), 0.1);
  EXPECT_EQ(c.train.trainer.adversarial().pad_token(), 0);  // the corpus pads with byte 0
  EXPECT_EQ(c.hooks.lora.rank(), 3);
  EXPECT_EQ(c.hooks.lora.targets(), (std::vector<std::string>{"q_proj"}));
  EXPECT_EQ(c.hooks.qat.exclude(), (std::vector<std::string>{"^head$"}));
  EXPECT_EQ(c.hooks.prune.granularity(), kd::prune::Granularity::kHead);
  EXPECT_EQ(c.hooks.prune_hook.schedule().end, 0.25);
  // The stages: specs, hook names, and a fingerprint that follows the stage's JSON alone.
  ASSERT_EQ(c.stages.size(), 3u);
  EXPECT_EQ(c.stages[0].spec.name(), "features");
  EXPECT_EQ(c.stages[2].spec.losses().size(), 4u);
  EXPECT_EQ(c.stages[2].hooks, (std::vector<std::string>{"qat"}));
  EXPECT_TRUE(c.uses_hook("qat"));
  EXPECT_FALSE(c.uses_hook("lora"));
  EXPECT_EQ(c.stages[0].weighting.policy, kd::app::WeightingPolicyKind::kFixed);
  EXPECT_EQ(c.stages[1].weighting.policy, kd::app::WeightingPolicyKind::kUncertainty);
  EXPECT_EQ(c.stages[1].weighting.init_log_var, 0.5);
  const auto other = parse_run_config(resolve_config({}, {"task=spam", "stages.2.epochs=9"}));
  EXPECT_EQ(other.stages[0].fingerprint, c.stages[0].fingerprint);
  EXPECT_NE(other.stages[2].fingerprint, c.stages[2].fingerprint);
  // The tree stays beside the fields, as resolved.
  EXPECT_EQ(c.document["train"]["lr"], 0.25);
}

TEST(RunConfig, LanguageModelSectionsAndTheCustomTasksFiles) {
  const auto lm = parse_run_config(resolve_config({}, {"task=byte_lm", "data.context=32", "generate.tokens=5",
                                                       "generate.prompt=\"Hi\"", "generate.seed=4"}));
  EXPECT_EQ(lm.data.context, 32);
  ASSERT_TRUE(lm.generate.has_value());
  EXPECT_EQ(lm.generate->tokens, 5);
  EXPECT_EQ(lm.generate->prompt, "Hi");
  EXPECT_EQ(lm.generate->seed, 4u);
  EXPECT_EQ(lm.student.model, "causal_lm");
}

TEST(RunConfig, RefusesWhatTheTreeCannotSayNamingThePath) {
  EXPECT_THAT(error_of({"teacher.ensemble=[3]"}),
              HasSubstr("config: 'teacher.ensemble[0]' must be a teacher file name, got 3"));
  EXPECT_THAT(error_of({"teacher.ensemble=[\"a.pt\", \"\"]"}), HasSubstr("'teacher.ensemble[1]' must be a teacher file"));
  EXPECT_THAT(error_of({"teacher.ensemble_weights=[1, -0.5]"}),
              HasSubstr("'teacher.ensemble_weights' must hold numbers >= 0, got [1,-0.5]"));
  EXPECT_THAT(error_of({"train.augment=\"token_mix\""}),
              HasSubstr("'train.augment' = \"token_mix\" does not fit task 'fashion_mnist'"));
  EXPECT_THAT(error_of({"lora.targets=[1]"}), HasSubstr("lora.targets[0]"));
}

TEST(RunConfig, ReparsedAppliesAnEditAndParsesAgain) {
  const auto c = parse_run_config(resolve_config({}, {}));
  const auto d = kd::app::reparsed(c, [](nlohmann::json& tree) { tree["train"]["batch_size"] = 17; });
  EXPECT_EQ(d.train.batch_size, 17);
  EXPECT_EQ(c.train.batch_size, 128);  // the original is unchanged
  EXPECT_EQ(d.document["train"]["batch_size"], 17);
  EXPECT_THROW(kd::app::reparsed(c, [](nlohmann::json& tree) { tree["teacher"]["ensemble"] = {7}; }), kd::Error);
}

TEST(RunConfig, FingerprintIgnoresWhereAndHowARunIsShown) {
  const auto a = resolve_config({}, {});
  const auto b = resolve_config({}, {"out=\"elsewhere\"", "train.threads=2", "train.log_every=7", "evaluation.ece_bins=3"});
  EXPECT_EQ(kd::app::config_fingerprint(a), kd::app::config_fingerprint(b));
  const auto c = resolve_config({}, {"train.lr=0.002"});
  EXPECT_NE(kd::app::config_fingerprint(a), kd::app::config_fingerprint(c));
  EXPECT_EQ(kd::app::config_fingerprint(a).size(), 8u);  // CRC-32 in hex
}

}  // namespace
