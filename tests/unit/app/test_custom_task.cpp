// kd-train's custom task: classes inferred from the training targets, a validation split held out when none
// is given, token ids widened, and files that do not fit refused naming the file and the fix.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "config.h"
#include "kd/core/error.h"
#include "kd/data/safetensors.h"
#include "reference.h"
#include "task.h"

namespace {
using kd::app::parse_run_config;
using kd::app::resolve_config;
using kd::app::task_of;
using ::testing::HasSubstr;

std::string split_file(const std::string& dir, const std::string& name, const torch::Tensor& inputs,
                       const torch::Tensor& targets) {
  const std::string path = dir + "/" + name;
  kd::data::write_safetensors(path, {{"inputs", inputs}, {"targets", targets}});
  return path;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kd::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CustomTask, InfersClassesAndHoldsOutAValidationSplit) {
  const auto dir = kd::testing::temp_dir("custom_task");
  // Classes 0..3 with one unlabelled example (-100): 4 classes.
  const auto targets = torch::tensor({0, 3, 1, -100, 2, 0, 1, 2, 3, 0}, torch::kLong);
  const auto train = split_file(dir, "train.safetensors", torch::randn({10, 3}), targets);
  auto c = resolve_config({}, {"task=custom", "data.train=" + train, "data.validation_fraction=0.2"});
  EXPECT_EQ(c["data"]["num_classes"], 4);
  const auto& task = task_of(c);
  EXPECT_EQ(task.name(), "custom");
  EXPECT_EQ(task.num_classes(), 4);
  EXPECT_FALSE(task.trains_teacher());
  const auto s = task.load_splits(parse_run_config(c), torch::kCPU);
  EXPECT_EQ(s.validation.size(), 2);  // round(0.2 · 10)
  EXPECT_EQ(s.train.size(), 8);
  EXPECT_EQ(s.test.size(), 2);  // no data.test: the validation split stands in
  // The two splits partition the file: every example once.
  const auto all = std::get<0>(torch::cat({s.train.targets, s.validation.targets}).sort());
  EXPECT_TRUE(torch::equal(all, std::get<0>(targets.sort())));
  // A given number of classes is kept.
  EXPECT_EQ(resolve_config({}, {"task=custom", "data.train=" + train, "data.num_classes=7"})["data"]["num_classes"], 7);
}

TEST(CustomTask, TokenTargetsAreALanguageModelAndNarrowIdsWiden) {
  const auto dir = kd::testing::temp_dir("custom_task_lm");
  const auto ids = torch::randint(0, 65535, {6, 5}, torch::kInt32);
  // uint8 inputs (token ids) and int32 targets [N, L].
  const auto train = split_file(dir, "train.safetensors", ids.remainder(256).to(torch::kUInt8), ids);
  auto c = resolve_config({}, {"task=custom", "data.train=" + train});
  EXPECT_EQ(c["data"]["num_classes"], 0);
  EXPECT_EQ(task_of(c).eval_task(), kd::EvalTask::kLanguageModel);
  const auto s = task_of(c).load_splits(parse_run_config(c), torch::kCPU);
  EXPECT_EQ(s.train.inputs.scalar_type(), torch::kLong);
  EXPECT_EQ(s.train.targets.scalar_type(), torch::kLong);
  const auto all = torch::cat({s.train.targets, s.validation.targets}).sum().item<int64_t>();
  EXPECT_EQ(all, ids.to(torch::kLong).sum().item<int64_t>());
}

TEST(CustomTask, RefusesFilesThatDoNotFitNamingTheFileAndTheFix) {
  const auto dir = kd::testing::temp_dir("custom_task_bad");
  const auto train = split_file(dir, "train.safetensors", torch::randn({8, 3}), torch::tensor({0, 1, 0, 1, 0, 1, 0, 1}));
  auto msg = error_of([&] { resolve_config({}, {"task=custom"}); });
  EXPECT_THAT(msg, HasSubstr("needs 'data.train'"));
  msg = error_of([&] { resolve_config({}, {"task=custom", "data.train=" + dir + "/none.safetensors"}); });
  EXPECT_THAT(msg, HasSubstr("data.train '" + dir + "/none.safetensors' does not exist"));
  // Another width of inputs in the validation file.
  const auto wide = split_file(dir, "wide.safetensors", torch::randn({4, 5}), torch::tensor({0, 1, 0, 1}));
  auto c = resolve_config({}, {"task=custom", "data.train=" + train, "data.validation=" + wide});
  msg = error_of([&] { task_of(c).load_splits(parse_run_config(c), torch::kCPU); });
  EXPECT_THAT(msg, HasSubstr("data.validation '" + wide + "' does not match data.train"));
  // A class id beyond data.num_classes.
  const auto five = split_file(dir, "five.safetensors", torch::randn({2, 3}), torch::tensor({0, 5}));
  c = resolve_config({}, {"task=custom", "data.train=" + train, "data.test=" + five});
  msg = error_of([&] { task_of(c).load_splits(parse_run_config(c), torch::kCPU); });
  EXPECT_THAT(msg, HasSubstr("class ids 0..5, outside 0..1 (data.num_classes = 2, given or inferred from data.train)"));
  // Float targets; a tensor the task does not read.
  const auto soft = split_file(dir, "soft.safetensors", torch::randn({2, 3}), torch::rand({2}));
  msg = error_of([&] { resolve_config({}, {"task=custom", "data.train=" + soft}); });
  EXPECT_THAT(msg, HasSubstr("\"targets\" must be integer class ids [N] or token ids [N, L]"));
  kd::data::write_safetensors(dir + "/extra.safetensors",
                              {{"inputs", torch::randn({2, 3})}, {"targets", torch::tensor({0, 1})}, {"labels", torch::tensor({0, 1})}});
  msg = error_of([&] { resolve_config({}, {"task=custom", "data.train=" + dir + "/extra.safetensors"}); });
  EXPECT_THAT(msg, HasSubstr("tensor 'labels' is not one the custom task reads"));
  // Models: a missing TorchScript file names the key.
  c = resolve_config({}, {"task=custom", "data.train=" + train});
  msg = error_of([&] { task_of(c).make_teacher(parse_run_config(c)); });
  EXPECT_THAT(msg, HasSubstr("needs 'teacher.torchscript'"));
}

}  // namespace
