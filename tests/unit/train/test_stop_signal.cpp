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

TEST(StopSignal, AStopAtAStagesLastStepComesAfterTheStageEnds) {
  const auto data = synthetic(64, 3);
  const auto dir = kd::testing::temp_dir("stop_at_end");
  torch::manual_seed(5);
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, two_stages(), options(dir));
  t.add_callback(std::make_shared<StopAt>(4, SIGTERM, false));  // stage a's last step
  const auto stopped = t.fit(data, nullptr);
  kd::StopSignal::reset();
  EXPECT_EQ(stopped.stopped_by_signal, SIGTERM);
  EXPECT_EQ(stopped.steps, 5);  // stage a ended normally, the first step of b ran
}

TEST(StopSignal, ARealSigintStopsOnceHandlersAreInstalledAndTheHandlerResetsItself) {
  kd::StopSignal::install();
  const auto dir = kd::testing::temp_dir("sigint");
  torch::manual_seed(5);
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt, two_stages(), options(dir));
  t.add_callback(std::make_shared<StopAt>(3, SIGINT, /*raise_it=*/true));
  const auto stopped = t.fit(synthetic(64, 3));
  EXPECT_EQ(stopped.stopped_by_signal, SIGINT);
  EXPECT_EQ(stopped.steps, 3);
  EXPECT_EQ(checkpoints_in(dir), 1u);
  // The first SIGINT put the default action back, so a second one would end the process.
  struct sigaction now {};
  sigaction(SIGINT, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
  kd::StopSignal::reset();
  EXPECT_EQ(kd::StopSignal::requested(), 0);
  EXPECT_EQ(kd::StopSignal::exit_code(SIGINT), 130);
  EXPECT_EQ(kd::StopSignal::exit_code(SIGTERM), 143);
}
