// kd::StopSignal in kd::StagedTrainer: a stop request ends the run after the current step with a
// checkpoint, and resuming from it gives the weights of an uninterrupted run; a real SIGINT does the
// same once the handlers are installed, and a second one would kill (the handler resets itself).
#include <csignal>
#include <filesystem>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;

std::vector<kd::Stage> two_stages() {
  return {kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.03),
          kd::Stage("b", torch::nn::AnyModule(kd::HardLabelCE())).steps(5).lr(0.01)};
}

kd::StagedTrainerOptions options(const std::string& dir) {
  return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(0).fingerprint("cfg");
}

// Asks to stop (or raises a signal) when the `at`-th step ends.
struct StopAt : kd::Callback {
  StopAt(int64_t at, int signal, bool raise_it) : at(at), signal(signal), raise_it(raise_it) {}
  void on_step_end(const kd::StepReport& r) override {
    if (r.step.global_step + 1 != at) return;
    if (raise_it) std::raise(signal);
    else kd::StopSignal::request(signal);
  }
  int64_t at;
  int signal;
  bool raise_it;
};

size_t checkpoints_in(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) n += e.path().extension() == ".pt";
  return n;
}

}  // namespace

TEST(StopSignal, StopsAfterTheStepWithACheckpointAndResumesExactly) {
  const auto data = synthetic(64, 3);
  torch::manual_seed(5);
  auto straight = std::make_shared<MlpImpl>();
  kd::StagedTrainer(kd::Student(straight), std::nullopt, two_stages(), options(kd::testing::temp_dir("straight")))
      .fit(data);

  for (int64_t stop_at : {2, 6}) {  // inside stage a, inside stage b
    SCOPED_TRACE(stop_at);
    const auto dir = kd::testing::temp_dir("stop");
    torch::manual_seed(5);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer stopping(kd::Student(net), std::nullopt, two_stages(), options(dir));
    stopping.add_callback(std::make_shared<StopAt>(stop_at, SIGTERM, /*raise_it=*/false));
    const auto stopped = stopping.fit(data);
    EXPECT_EQ(stopped.stopped_by_signal, SIGTERM);
    EXPECT_EQ(stopped.steps, stop_at);
    // checkpoint_every is 0: the only checkpoints are the stop's and, past stage a, a's end.
    EXPECT_EQ(checkpoints_in(dir), stop_at > 4 ? 2u : 1u);
    kd::StopSignal::reset();

    torch::manual_seed(999);
    auto resumed = std::make_shared<MlpImpl>();
    const auto rest =
        kd::StagedTrainer(kd::Student(resumed), std::nullopt, two_stages(), options(dir)).fit(data, nullptr, true);
    EXPECT_TRUE(rest.resumed);
    EXPECT_EQ(rest.resumed_from_step, stop_at);
    EXPECT_EQ(rest.stopped_by_signal, 0);
    EXPECT_EQ(rest.steps, 9);
    auto a = straight->named_parameters(), b = resumed->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  }
}

struct StageEnds : kd::Callback {
  void on_stage_end(const kd::Stage& s, const kd::StepInfo&) override { names.push_back(s.name()); }
  void on_eval(const kd::EvalResult& e) override { eval_steps.push_back(e.global_step); }
  std::vector<std::string> names;
  std::vector<int64_t> eval_steps;
};

TEST(StopSignal, AStopAtAStagesLastStepStopsRightAfterTheStageEnds) {
  const auto data = synthetic(64, 3);
  const auto dir = kd::testing::temp_dir("stop_at_end");
  torch::manual_seed(5);
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, two_stages(), options(dir).num_classes(4));
  t.add_callback(std::make_shared<StopAt>(4, SIGTERM, false));  // stage a's last step
  auto ends = std::make_shared<StageEnds>();
  t.add_callback(ends);
  const auto stopped = t.fit(data, &data);
  kd::StopSignal::reset();
  EXPECT_EQ(stopped.stopped_by_signal, SIGTERM);
  EXPECT_EQ(stopped.steps, 4);  // stage a ended normally (evaluation, callbacks, checkpoint), b never began
  EXPECT_EQ(ends->names, std::vector<std::string>{"a"});
  EXPECT_EQ(ends->eval_steps, std::vector<int64_t>{4});
  EXPECT_EQ(checkpoints_in(dir), 1u);
}

TEST(StopSignal, AnEvaluationDueAtTheStopStepStillRuns) {
  const auto data = synthetic(64, 3);
  torch::manual_seed(5);
  std::vector<kd::Stage> stages = {kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(6).eval_every(2)};
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, stages,
                      options(kd::testing::temp_dir("stop_eval")).num_classes(4));
  t.add_callback(std::make_shared<StopAt>(4, SIGTERM, false));
  auto ends = std::make_shared<StageEnds>();
  t.add_callback(ends);
  const auto stopped = t.fit(data, &data);
  kd::StopSignal::reset();
  EXPECT_EQ(stopped.steps, 4);
  EXPECT_EQ(ends->eval_steps, (std::vector<int64_t>{2, 4}));  // a resume starts after step 4: no evaluation is lost
}

TEST(StopSignal, ARealSignalStopsInsideAScopeAndTheHandlerStandsDownForBothSignals) {
  // Outside a Scope the program's own handling stands: here, a handler that only counts.
  static int counted = 0;
  struct sigaction mine {}, previous_int {}, previous_term {};
  mine.sa_handler = [](int) { ++counted; };
  sigemptyset(&mine.sa_mask);
  sigaction(SIGINT, &mine, &previous_int);
  sigaction(SIGTERM, &mine, &previous_term);
  for (int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig);
    const auto dir = kd::testing::temp_dir("signal");
    torch::manual_seed(5);
    kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, two_stages(), options(dir));
    t.add_callback(std::make_shared<StopAt>(3, sig, /*raise_it=*/true));
    kd::TrainSummary stopped;
    {
      kd::StopSignal::Scope scope;
      stopped = t.fit(synthetic(64, 3));
      // The first signal put the default action back for both, so a second one of either kind would kill.
      struct sigaction now {};
      sigaction(SIGINT, nullptr, &now);
      EXPECT_EQ(now.sa_handler, SIG_DFL);
      sigaction(SIGTERM, nullptr, &now);
      EXPECT_EQ(now.sa_handler, SIG_DFL);
    }
    EXPECT_EQ(stopped.stopped_by_signal, sig);
    EXPECT_EQ(stopped.steps, 3);
    EXPECT_EQ(checkpoints_in(dir), 1u);
    kd::StopSignal::reset();
    // The Scope put the program's handler back.
    std::raise(sig);
    EXPECT_EQ(kd::StopSignal::requested(), 0);
  }
  EXPECT_EQ(counted, 2);
  sigaction(SIGINT, &previous_int, nullptr);
  sigaction(SIGTERM, &previous_term, nullptr);
  EXPECT_EQ(kd::StopSignal::requested(), 0);
  EXPECT_EQ(kd::StopSignal::exit_code(SIGINT), 130);
  EXPECT_EQ(kd::StopSignal::exit_code(SIGTERM), 143);
}

TEST(StopSignalDeathTest, ExitByEndsTheProcessByTheSignal) {
  EXPECT_EXIT(kd::StopSignal::exit_by(SIGTERM), ::testing::KilledBySignal(SIGTERM), "");
  EXPECT_EXIT(kd::StopSignal::exit_by(SIGINT), ::testing::KilledBySignal(SIGINT), "");
}
