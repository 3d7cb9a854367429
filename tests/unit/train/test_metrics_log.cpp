#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/core/error.h"
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

}  // namespace
