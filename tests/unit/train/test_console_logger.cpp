// kd::summary_table (the end-of-run table ConsoleLogger prints) and the progress line, checked against
// hand-written text.
#include <gtest/gtest.h>

#include "kd/train/console_logger.h"

namespace {

kd::TrainSummary two_stage_summary() {
  kd::TrainSummary s;
  s.steps = 1290;
  s.evaluations = {{"features", 430, {{"accuracy", 0.5}, {"macro_f1", 0.25}}},
                   {"logits", 860, {{"accuracy", 0.75}, {"macro_f1", 0.5}}},
                   {"logits", 1290, {{"accuracy", 0.875}, {"macro_f1", 0.8125}, {"zeta", 2.0}}}};
  return s;
}

TEST(SummaryTable, OneRowPerStageWithItsLastEvaluation) {
  const std::string expected =
      "stage         step  accuracy  macro_f1      zeta\n"
      "features       430    0.5000    0.2500         -\n"
      "logits        1290    0.8750    0.8125    2.0000\n"
      "1,290 steps; finished";
  EXPECT_EQ(kd::summary_table(two_stage_summary()), expected);
}

TEST(SummaryTable, SaysHowTheRunEnded) {
  auto s = two_stage_summary();
  s.resumed = true;
  s.resumed_from_step = 700;
  s.stopped_by_signal = 15;
  s.nonfinite_steps = 2;
  s.rollbacks = 1;
  s.lr_scale = 0.25;
  const std::string table = kd::summary_table(s);
  const std::string last = table.substr(table.rfind('\n') + 1);
  EXPECT_EQ(last,
            "1,290 steps (resumed at step 700); stopped by signal 15; 2 non-finite step(s) not applied, 1 rollback(s), "
            "learning rates x0.25");
}

TEST(SummaryTable, LanguageModelMetricsComeInTheirOwnOrderAndARunWithoutEvaluationsHasNoRows) {
  kd::TrainSummary s;
  s.steps = 10;
  s.evaluations = {{"lm", 10, {{"token_accuracy", 0.5}, {"bits_per_byte", 2.0}, {"nll", 1.5}, {"perplexity", 4.0}}}};
  EXPECT_EQ(kd::summary_table(s),
            "stage      step       nll  perplexity  bits_per_byte  token_accuracy\n"
            "lm           10    1.5000      4.0000         2.0000          0.5000\n"
            "10 steps; finished");
  EXPECT_EQ(kd::summary_table(kd::TrainSummary{}), "0 steps; finished");
}

TEST(ClockString, HoursMinutesSeconds) {
  EXPECT_EQ(kd::clock_string(0), "0:00");
  EXPECT_EQ(kd::clock_string(65), "1:05");
  EXPECT_EQ(kd::clock_string(59.6), "1:00");
  EXPECT_EQ(kd::clock_string(3725.2), "1:02:05");
  EXPECT_EQ(kd::clock_string(36000), "10:00:00");
  EXPECT_EQ(kd::clock_string(-1), "--:--");
}

kd::Progress some_progress() {
  kd::Progress p;
  p.stage = "logits";
  p.done = 120;
  p.total = 480;
  p.loss = 0.45214;
  p.samples_per_s = 812.4;
  p.elapsed_s = 41;
  p.stage_eta_s = 73;
  p.run_eta_s = 242;
  return p;
}

TEST(ProgressLine, AWideTerminalShowsEverythingWithAThirtyCellBar) {
  EXPECT_EQ(kd::progress_line(some_progress(), 200),
            "[logits] ########......................  120/480  loss 0.4521  0:41 elapsed  812/s  "
            "stage ETA 1:13, run ETA 4:02");
}

TEST(ProgressLine, NarrowTerminalsLoseTheBarThenTheExtrasButNeverTheStepsOrTheEtas) {
  for (int columns = 20; columns <= 140; ++columns) {
    SCOPED_TRACE(columns);
    const auto line = kd::progress_line(some_progress(), columns);
    EXPECT_LE(static_cast<int>(line.size()), columns);
    if (columns >= 46) {  // "[logits] 120/480  stage ETA 1:13, run ETA 4:02" is 46 characters
      EXPECT_NE(line.find("120/480"), std::string::npos);
      EXPECT_NE(line.find("run ETA 4:02"), std::string::npos);
    }
  }
  // 60 columns: 46 for the steps and ETAs, 2 + 12 for a bar a quarter full.
  EXPECT_EQ(kd::progress_line(some_progress(), 60), "[logits] ###.........  120/480  stage ETA 1:13, run ETA 4:02");
  EXPECT_EQ(kd::progress_line(some_progress(), 50), "[logits] 120/480  stage ETA 1:13, run ETA 4:02");
  // Unknown ETAs (a run's first step) say so.
  auto p = some_progress();
  p.run_eta_s = -1;
  EXPECT_NE(kd::progress_line(p, 200).find("run ETA --:--"), std::string::npos);
}

}  // namespace
