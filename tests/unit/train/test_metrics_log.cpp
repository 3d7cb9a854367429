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

}  // namespace
