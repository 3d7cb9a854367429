// kd-train's config tree: layering order and errors that name the JSON path.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config.h"
#include "hook_config.h"
#include "kd/train/recipes.h"
#include "stage_config.h"
#include "task.h"
#include "kd/core/error.h"
#include "reference.h"

namespace {
using kd::app::resolve_config;
using ::testing::HasSubstr;

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string error_of(const std::vector<std::string>& files, const std::vector<std::string>& sets) {
  try {
    resolve_config(files, sets);
  } catch (const kd::Error& e) {
    EXPECT_TRUE(e.category() == kd::ErrorCategory::kConfig || e.category() == kd::ErrorCategory::kFile);
    return e.what();
  }
  ADD_FAILURE() << "expected kd::Error";
  return "";
}

TEST(Config, DefaultsThenFilesInOrderThenSetOverrides) {
  const auto dir = kd::testing::temp_dir("config");
  const auto a = write(dir, "a.json", R"({"teacher": {"epochs": 7}, "train": {"lr": 0.01}})");
  const auto b = write(dir, "b.json", R"({"teacher": {"epochs": 9}})");
  auto c = resolve_config({a, b}, {"train.lr=0.005", "train.device=auto", "out=\"x/y\"", "stages.2.epochs=5"});
  EXPECT_EQ(c["teacher"]["epochs"], 9);        // b after a
  EXPECT_EQ(c["train"]["lr"], 0.005);          // --set after files
  EXPECT_EQ(c["train"]["device"], "auto");     // bare word -> string
  EXPECT_EQ(c["out"], "x/y");
  EXPECT_EQ(c["stages"][2]["epochs"], 5);      // numeric path parts index arrays
  EXPECT_EQ(c["stages"][1]["epochs"], 1);      // untouched default
  EXPECT_EQ(c["train"]["batch_size"], 128);
}

TEST(Config, DefaultStagesAreTheProgressive3Recipe) {
  const auto specs = kd::app::stages_from_json(kd::app::distill_defaults()["stages"], "defaults");
  const auto recipe = kd::progressive3();
  ASSERT_EQ(specs.size(), recipe.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(specs[i].name(), recipe[i].name());
    EXPECT_EQ(specs[i].epochs(), recipe[i].epochs());
    ASSERT_EQ(specs[i].losses().size(), recipe[i].losses().size());
    for (size_t k = 0; k < specs[i].losses().size(); ++k) {
      EXPECT_EQ(specs[i].losses()[k].type(), recipe[i].losses()[k].type());
      EXPECT_EQ(specs[i].losses()[k].term_name(), recipe[i].losses()[k].term_name());
      EXPECT_EQ(specs[i].losses()[k].weight()(0.5), recipe[i].losses()[k].weight()(0.5));
      EXPECT_EQ(specs[i].losses()[k].values(), recipe[i].losses()[k].values());
    }
  }
  // The shipped full config spells out the same stages.
  const auto shipped = resolve_config({std::string(KD_SOURCE_DIR) + "/configs/fashion_mnist.json"}, {});
  EXPECT_EQ(kd::app::stages_to_json(kd::app::stages_from_json(shipped["stages"], "shipped")),
            kd::app::distill_defaults()["stages"]);
}

TEST(Config, UnknownKeyNamesThePathAndSuggestsTheCloseMatch) {
  const auto dir = kd::testing::temp_dir("config");
  const auto f = write(dir, "typo.json", R"({"train": {"batchsize": 64}})");
  const auto msg = error_of({f}, {});
  EXPECT_NE(msg.find("typo.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'train.batchsize'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.batch_size'"), std::string::npos) << msg;
  const auto top = error_of({}, {"teachr.epochs=3"});
  EXPECT_NE(top.find("did you mean 'teacher'"), std::string::npos) << top;
  const auto stage = error_of({}, {"stages.1.epoch=3"});
  EXPECT_NE(stage.find("'stages[1].epoch' is not a stage key; did you mean 'epochs'?"), std::string::npos) << stage;
}

TEST(Config, StageAndLossErrorsNameTheirJsonPath) {
  auto msg = error_of({}, {"stages.2.losses.2.temperature=0"});
  EXPECT_NE(msg.find("'stages[2].losses[2]'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("temperature"), std::string::npos) << msg;
  msg = error_of({}, {"stages.2.losses.2.temprature=2"});
  EXPECT_NE(msg.find("'stages[2].losses[2]'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("temperature"), std::string::npos) << msg;  // the allowed key it meant
  msg = error_of({}, {"stages.0.losses.0.type=feature_l3"});
  EXPECT_NE(msg.find("'stages[0].losses[0]'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("feature_l2"), std::string::npos) << msg;
  msg = error_of({}, {"stages.0.losses.0.weight=\"high\""});
  EXPECT_NE(msg.find("'stages[0].losses[0].weight' must be a number or"), std::string::npos) << msg;
  msg = error_of({}, {"stages.1.epochs=-1"});
  EXPECT_NE(msg.find("'stages[1].epochs' must be an integer in [0, 1000000], got -1"), std::string::npos) << msg;
  // 2^60 + 1 epochs: refused, not multiplied by the steps per epoch into an overflowed short plan.
  msg = error_of({}, {"stages.0.epochs=1152921504606846977"});
  EXPECT_NE(msg.find("'stages[0].epochs' must be an integer in [0, 1000000], got 1152921504606846977"), std::string::npos)
      << msg;
  msg = error_of({}, {"stages.0.steps=18446744073709551615"});  // 2^64 - 1, beyond int64
  EXPECT_NE(msg.find("'stages[0].steps' must be an integer in [0, 1099511627776], got 18446744073709551615"),
            std::string::npos)
      << msg;
  msg = error_of({}, {"stages.7.epochs=1"});
  EXPECT_NE(msg.find("'stages' is a list of 3 entries; index it with 0..2"), std::string::npos) << msg;
  // An index beyond any integer type: the same message, not a bare stoull.
  msg = error_of({}, {"stages.99999999999999999999.epochs=1"});
  EXPECT_NE(msg.find("'stages' is a list of 3 entries; index it with 0..2 (e.g. stages.0), not '99999999999999999999'"),
            std::string::npos)
      << msg;
  // Negative weights, constant or scheduled, are refused with their path.
  msg = error_of({}, {"stages.2.losses.2.weight=-5"});
  EXPECT_NE(msg.find("'stages[2].losses[2].weight' must be >= 0, got -5"), std::string::npos) << msg;
  msg = error_of({}, {"stages.2.losses.2.weight={\"schedule\": \"linear\", \"start\": 1, \"end\": -1}"});
  EXPECT_NE(msg.find("'stages[2].losses[2].weight.end' must be >= 0, got -1"), std::string::npos) << msg;
  EXPECT_NO_THROW(resolve_config({}, {"stages.2.losses.2.weight=0"}));
  msg = error_of({}, {"stages=[]"});
  EXPECT_NE(msg.find("'stages' must be a non-empty array"), std::string::npos) << msg;
  msg = error_of({}, {"stages.0.losses=[]"});
  EXPECT_NE(msg.find("'stages[0].losses' must be a non-empty list"), std::string::npos) << msg;
  msg = error_of({}, {"stages.0.losses.0={\"weight\": 1}"});
  EXPECT_NE(msg.find("'stages[0].losses[0].type' is missing"), std::string::npos) << msg;
  msg = error_of({}, {"stages.2.losses.3.name=\"kl\""});
  EXPECT_NE(msg.find("two terms are named 'kl'"), std::string::npos) << msg;
}

TEST(Config, WrongTypeAndOutOfRangeNameValueAndWhatIsAllowed) {
  auto msg = error_of({}, {"train.batch_size=\"big\""});
  EXPECT_NE(msg.find("'train.batch_size' must be an integer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"big\""), std::string::npos) << msg;
  msg = error_of({}, {"data.validation_size=70000"});
  EXPECT_NE(msg.find("'data.validation_size' = 70000 is out of range"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 59999]"), std::string::npos) << msg;
  msg = error_of({}, {"train.lr=0"});
  EXPECT_NE(msg.find("(0, 10]"), std::string::npos) << msg;
  msg = error_of({}, {"train.precision=fp16"});
  EXPECT_NE(msg.find("'train.precision' = \"fp16\" is not allowed; use one of: fp32, bf16"), std::string::npos) << msg;
  msg = error_of({}, {"train=3"});
  EXPECT_NE(msg.find("'train' must be an object"), std::string::npos) << msg;
  msg = error_of({}, {"nothing"});
  EXPECT_NE(msg.find("key.path=value"), std::string::npos) << msg;
  // Numbers too large for an integer key are a type error, not a conversion (undefined beyond int64).
  for (const char* huge : {"-2.2e88", "1e19", "9223372036854775808.0"}) {
    msg = error_of({}, {std::string("data.limit=") + huge});
    EXPECT_NE(msg.find("'data.limit' must be an integer"), std::string::npos) << huge << ": " << msg;
  }
  // A number beyond a double is an error naming where it came from, in a file or a --set.
  msg = error_of({}, {"data.limit=1e999"});
  EXPECT_NE(msg.find("--set data.limit=1e999"), std::string::npos) << msg;
  const auto dir = kd::testing::temp_dir("config");
  const auto huge = write(dir, "huge.json", "{\"data\": {\"limit\": -2222222222e22222222222221}}");
  msg = error_of({huge}, {});
  EXPECT_NE(msg.find("huge.json: not valid JSON"), std::string::npos) << msg;
  // A whole number written as a float is still one.
  EXPECT_EQ(resolve_config({}, {"data.limit=2e3"})["data"]["limit"].get<double>(), 2000.0);
}

TEST(Config, MissingAndMalformedFiles) {
  const auto dir = kd::testing::temp_dir("config");
  auto msg = error_of({dir + "/absent.json"}, {});
  EXPECT_NE(msg.find("absent.json"), std::string::npos) << msg;
  const auto bad = write(dir, "bad.json", "{\"student\": ");
  msg = error_of({bad}, {});
  EXPECT_NE(msg.find("bad.json: not valid JSON"), std::string::npos) << msg;
  const auto arr = write(dir, "arr.json", "[1, 2]");
  msg = error_of({arr}, {});
  EXPECT_NE(msg.find("must be a JSON object"), std::string::npos) << msg;
}

TEST(Config, StageHooksAreCheckedByName) {
  auto msg = error_of({}, {"stages.2.hooks=[\"lorra\"]"});
  EXPECT_THAT(msg, HasSubstr("'stages[2].hooks[0]' is \"lorra\"; did you mean 'lora'? a stage hook is one of: lora, qat"));
  msg = error_of({}, {"stages.2.hooks=[\"lora\", \"lora\"]"});
  EXPECT_THAT(msg, HasSubstr("'stages[2].hooks[1]' repeats \"lora\""));
  msg = error_of({}, {"lora.rank=0"});
  EXPECT_THAT(msg, HasSubstr("'lora.rank' = 0 is out of range"));
  EXPECT_NO_THROW(resolve_config({}, {"stages.2.hooks=[\"lora\"]"}));
  msg = error_of({}, {"qat.weight_observer=\"min_max\""});
  EXPECT_THAT(msg, HasSubstr("'qat.weight_observer'"));
  EXPECT_THAT(msg, HasSubstr("minmax"));
  msg = error_of({}, {"qat.freeze_observers_at=1.5"});
  EXPECT_THAT(msg, HasSubstr("'qat.freeze_observers_at' = 1.5 is out of range"));
}

TEST(Config, TheTaskPicksItsDefaultsFromFilesOrSet) {
  const auto dir = kd::testing::temp_dir("config");
  EXPECT_EQ(resolve_config({}, {})["task"], "fashion_mnist");
  auto spam = resolve_config({}, {"task=spam", "student.layers=3"});
  EXPECT_EQ(spam["student"]["model"], "transformer");
  EXPECT_EQ(spam["student"]["layers"], 3);
  EXPECT_EQ(spam["data"]["max_len"], 128);
  EXPECT_FALSE(spam["data"].contains("validation_size"));  // a Fashion-MNIST key
  // A file names the task; a later --set of a key of that task applies on top of its defaults.
  const auto lm = write(dir, "lm.json", R"({"task": "byte_lm", "data": {"context": 64}})");
  auto c = resolve_config({lm}, {"generate.tokens=10"});
  EXPECT_EQ(c["task"], "byte_lm");
  EXPECT_EQ(c["data"]["context"], 64);
  EXPECT_EQ(c["data"]["eval_limit"], 512);  // byte_lm's default
  EXPECT_EQ(c["generate"]["tokens"], 10);
  EXPECT_EQ(c["student"]["model"], "causal_lm");
  // --set task wins over the file's, and the file is then checked against that task's keys.
  const auto msg = error_of({lm}, {"task=spam"});
  EXPECT_THAT(msg, HasSubstr("lm.json: unknown key 'data.context'; 'data.context' is a key of task byte_lm (this "
                             "config's task is \"spam\""));
  const auto plain = write(dir, "plain.json", R"({"train": {"batch_size": 8}})");
  EXPECT_EQ(resolve_config({plain}, {"task=byte_lm"})["student"]["model"], "causal_lm");
}

TEST(Config, TaskErrorsNameTheTasksAndTheirKeys) {
  auto msg = error_of({}, {"task=spamm"});
  EXPECT_THAT(msg, HasSubstr("--set task=spamm: 'task' = \"spamm\" is not allowed; use one of: fashion_mnist, spam, byte_lm"));
  // A key of another task: say which task has it and how to switch.
  msg = error_of({}, {"student.layers=3"});
  EXPECT_THAT(msg, HasSubstr("unknown key 'student.layers'; 'student.layers' is a key of task spam, byte_lm and "
                             "custom (this config's task is \"fashion_mnist\"; set \"task\": \"spam\" to use it)"));
  msg = error_of({}, {"task=spam", "data.validation_size=100"});
  EXPECT_THAT(msg, HasSubstr("'data.validation_size' is a key of task fashion_mnist"));
  // Each task has its own student architectures.
  msg = error_of({}, {"task=spam", "student.model=depthwise_cnn"});
  EXPECT_THAT(msg, HasSubstr("'student.model' = \"depthwise_cnn\" is not allowed; use one of: transformer"));
  msg = error_of({}, {"task=byte_lm", "student.model=transformer"});
  EXPECT_THAT(msg, HasSubstr("use one of: causal_lm"));
  // Lists: every element has the default's element type.
  msg = error_of({}, {"task=spam", "student.depth_layers=[1, \"two\"]"});
  EXPECT_THAT(msg, HasSubstr("'student.depth_layers[1]' must be an integer (like [1]), got a string (\"two\")"));
  msg = error_of({}, {"task=byte_lm", "teacher.heads=0"});
  EXPECT_THAT(msg, HasSubstr("'teacher.heads' = 0 is out of range; allowed [1, 1024]"));
  const auto dir = kd::testing::temp_dir("config");
  const auto bad = write(dir, "bad_task.json", R"({"task": 3})");
  msg = error_of({bad}, {});
  EXPECT_THAT(msg, HasSubstr("bad_task.json: 'task' = 3 is not allowed"));
}

TEST(Config, EveryTasksDefaultsAreAValidConfigWithValidStages) {
  for (const auto& task : kd::app::task_names()) {
    SCOPED_TRACE(task);
    const auto& d = kd::app::task_defaults(task);
    EXPECT_EQ(d["task"], task);
    EXPECT_NO_THROW(kd::app::validate_config(d, "defaults"));
    EXPECT_NO_THROW(kd::app::stages_from_json(d["stages"], "defaults"));
  }
}

TEST(Config, PruningIsAStageHookWithItsOwnSchedule) {
  auto c = resolve_config({}, {"stages.2.hooks=[\"prune\"]", "stages.2.prune={\"end\": 0.7}", "prune.granularity=channel"});
  const auto options = kd::app::prune_hook_options_from_json(c["prune"], c["stages"]);
  EXPECT_DOUBLE_EQ(options.stages().at("logits").end, 0.7);
  EXPECT_DOUBLE_EQ(options.stages().at("logits").start, 0.0);  // from the top-level "prune"
  EXPECT_EQ(kd::app::prune_options_from_json(c["prune"], "config").granularity(), kd::prune::Granularity::kChannel);
  auto msg = error_of({}, {"stages.2.prune={\"end\": 0.7}"});
  EXPECT_THAT(msg, HasSubstr("'stages[2].prune' sets a pruning schedule but the stage does not list \"prune\""));
  msg = error_of({}, {"stages.2.hooks=[\"prune\"]", "stages.2.prune={\"ends\": 0.7}"});
  EXPECT_THAT(msg, HasSubstr("'stages[2].prune.ends' is not a key of a stage's pruning schedule; did you mean 'end'?"));
  msg = error_of({}, {"stages.2.hooks=[\"prune\"]", "stages.2.prune={\"end\": 1}"});
  EXPECT_THAT(msg, HasSubstr("'stages[2].prune.end' must be a sparsity in [0, 1), got 1"));
  msg = error_of({}, {"prune.granularity=rows"});
  EXPECT_THAT(msg, HasSubstr("use one of: unstructured, channel, head"));
  msg = error_of({}, {"stages.2.hooks=[\"prun\"]"});
  EXPECT_THAT(msg, HasSubstr("did you mean 'prune'? a stage hook is one of: lora, qat, prune"));
}

TEST(Config, ShippedConfigsAreValid) {
  // Every file in configs/, so a config added later is checked without being listed here.
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(KD_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(resolve_config({entry.path().string()}, {}));
    ++checked;
  }
  EXPECT_GE(checked, 19);
}

}  // namespace
