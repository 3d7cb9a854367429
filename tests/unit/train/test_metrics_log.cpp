#include <chrono>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/callback.h"
#include "kd/train/metrics_log.h"
#include "kd/train/stage.h"
#include "reference.h"

namespace {

TEST(MetricsLog, EveryLineIsAJsonObjectAnIndependentParserReads) {
  const auto path = kd::testing::temp_dir("mlog") + "/metrics.jsonl";
  {
    kd::MetricsLog log(path);
    kd::Stage stage("kl \"quoted\"\n", torch::nn::AnyModule());
    kd::StepInfo info;
    log.on_stage_begin(stage, info);
    kd::StepReport r;
    r.step.global_step = 7;
    r.step.progress = 0.5;
    r.loss.total = torch::tensor(0.25);
    r.loss.parts["kl"] = torch::tensor(0.125);
    r.loss.parts["w.kl"] = torch::tensor(std::nan(""));
    r.lr = 1e-3;
    log.on_step_end(r);
    kd::EvalResult e;
    e.stage = "kl";
    e.global_step = 7;
    e.metrics["accuracy"] = 0.875;
    log.on_eval(e);
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["stage"], "kl \"quoted\"\n");
  EXPECT_EQ(lines[1]["event"], "step");
  EXPECT_EQ(lines[1]["stage"], "kl \"quoted\"\n");  // the stage it belongs to, from its stage_begin
  // Wall-clock seconds since 1970, written a moment ago.
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_NEAR(lines[1]["time"].get<double>(), now, 60.0);
  EXPECT_EQ(lines[1]["global_step"], 7);
  EXPECT_DOUBLE_EQ(lines[1]["loss"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(lines[1]["parts"]["kl"].get<double>(), 0.125);
  EXPECT_TRUE(lines[1]["parts"]["w.kl"].is_null());
  EXPECT_DOUBLE_EQ(lines[1]["lr"].get<double>(), 1e-3);
  EXPECT_DOUBLE_EQ(lines[2]["metrics"]["accuracy"].get<double>(), 0.875);
  EXPECT_THROW(kd::MetricsLog("/nonexistent-dir/x.jsonl"), kd::Error);
}

TEST(MetricsLog, FitEventsCarryTheModelSizesAndTheRunsEnd) {
  const auto path = kd::testing::temp_dir("mlog") + "/metrics.jsonl";
  {
    kd::MetricsLog log(path);
    kd::FitInfo info;
    info.student_parameters = 16650;
    info.student_bytes = 67032;
    info.teacher_parameters = 871018;
    info.teacher_bytes = 3488200;
    info.train_examples = 55000;
    info.stages = 3;
    log.on_fit_begin(info);
    kd::StepReport r;
    r.loss.total = torch::tensor(std::nan(""));
    r.skipped_nonfinite = true;
    r.nonfinite_total = 1;
    log.on_step_end(r);
    kd::TrainSummary s;
    s.steps = 900;
    s.nonfinite_steps = 1;
    s.lr_scale = 0.5;
    s.evaluations = {{"features", 300, {{"accuracy", 0.5}}}, {"logits", 600, {{"accuracy", 0.8}}},
                     {"logits", 900, {{"accuracy", 0.875}, {"macro_f1", 0.75}}}};
    log.on_fit_end(s);
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["event"], "fit_begin");
  EXPECT_EQ(lines[0]["student_parameters"], 16650);
  EXPECT_EQ(lines[0]["teacher_bytes"], 3488200);
  EXPECT_TRUE(lines[0]["resumed_from_step"].is_null());
  EXPECT_TRUE(lines[1]["loss"].is_null());
  EXPECT_EQ(lines[1]["skipped_nonfinite"], true);
  EXPECT_EQ(lines[1]["nonfinite_total"], 1);
  EXPECT_EQ(lines[2]["event"], "fit_end");
  EXPECT_EQ(lines[2]["global_step"], 900);
  EXPECT_DOUBLE_EQ(lines[2]["lr_scale"].get<double>(), 0.5);
  // Each stage's last evaluation.
  ASSERT_EQ(lines[2]["final"].size(), 2u);
  EXPECT_EQ(lines[2]["final"]["features"]["global_step"], 300);
  EXPECT_EQ(lines[2]["final"]["logits"]["global_step"], 900);
  EXPECT_DOUBLE_EQ(lines[2]["final"]["logits"]["metrics"]["accuracy"].get<double>(), 0.875);
  EXPECT_DOUBLE_EQ(lines[2]["final"]["logits"]["metrics"]["macro_f1"].get<double>(), 0.75);
}

TEST(MetricsLog, ALineAKilledProcessLeftHalfWrittenIsCutOffBeforeAppending) {
  const auto path = kd::testing::temp_dir("mlog") + "/metrics.jsonl";
  {
    std::ofstream out(path);
    out << R"({"event":"stage_begin","stage":"a","global_step":0})" << "\n" << R"({"event":"step","glob)";
  }
  {
    kd::MetricsLog log(path);
    kd::EvalResult e;
    e.stage = "a";
    log.on_eval(e);
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));  // throws if glued
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["event"], "stage_begin");
  EXPECT_EQ(lines[1]["event"], "eval");
}

TEST(MetricsLog, AResumeCutsTheLinesOfTheStepsItDoesAgain) {
  const auto path = kd::testing::temp_dir("mlog") + "/metrics.jsonl";
  // What a run killed in its 8th step left. A step line carries the steps done before it (0, 1, ...), the other
  // events the steps done when they happened. Stage "a" ended after 5 steps (lines 3 and 4) with its
  // checkpoint (5 steps done); stage "b" began then, its steps 5 and 6 were logged, then the kill.
  const std::vector<std::string> before = {
      R"({"event":"fit_begin","resumed_from_step":null})",
      R"({"event":"stage_begin","stage":"a","global_step":0})",
      R"({"event":"step","global_step":3,"stage_step":3})",
      R"({"event":"step","global_step":4,"stage_step":4})",
      R"({"event":"eval","stage":"a","global_step":5,"metrics":{}})",
      R"({"event":"stage_end","stage":"a","global_step":5})",
      R"({"event":"stage_begin","stage":"b","global_step":5})",
      R"({"event":"step","global_step":5,"stage_step":0})",
      R"({"event":"eval","stage":"b","global_step":6,"metrics":{}})",
      R"({"event":"step","global_step":6,"stage_step":1})"};
  {
    std::ofstream out(path);
    for (const auto& line : before) out << line << "\n";
  }
  {
    kd::MetricsLog log(path);
    kd::FitInfo info;
    info.resumed = true;
    info.resumed_from_step = 5;
    log.on_fit_begin(info);
  }
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  // Kept: the 5 steps done and what followed the checkpoint after them but the next stage's begin (written
  // again by the resumed run); gone: the lines of steps 5 and 6 and the evaluation after step 6; then the new
  // fit_begin.
  ASSERT_EQ(lines.size(), 7u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(lines[i], before[i]);
  const auto last = nlohmann::json::parse(lines[6]);
  EXPECT_EQ(last["event"], "fit_begin");
  EXPECT_EQ(last["resumed_from_step"], 5);
}

}  // namespace
