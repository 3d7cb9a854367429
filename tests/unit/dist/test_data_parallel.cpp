// Data-parallel training over c10d Gloo on loopback. Each multi-rank test starts this same test
// binary again as rank 1 (KD_TEST_RANK=1, filtered to the same test) and plays rank 0 itself.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/dist/gradient_sync.h"
#include "kd/dist/process_group.h"
#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

extern char** environ;

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;
using Clock = std::chrono::steady_clock;

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// The rank this process plays: 1 when started by spawn_rank_1, else 0 (the test itself).
int my_rank() {
  const char* r = std::getenv("KD_TEST_RANK");
  return r ? std::atoi(r) : 0;
}

/// Starts this test binary as rank 1 of the current test, on `port`.
pid_t spawn_rank_1(int port, const std::string& extra_env = "") {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string filter = std::string("--gtest_filter=") + info->test_suite_name() + "." + info->name();
  std::vector<std::string> env_strings = {"KD_TEST_RANK=1", "KD_TEST_PORT=" + std::to_string(port)};
  if (!extra_env.empty()) env_strings.push_back(extra_env);
  std::vector<char*> env;
  for (auto& s : env_strings) env.push_back(s.data());
  for (char** e = environ; *e; ++e) {
    if (std::string(*e).rfind("KD_TEST_", 0) != 0) env.push_back(*e);
  }
  env.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::vector<char*> argv = {self.data(), const_cast<char*>(filter.c_str()), nullptr};
  pid_t pid = 0;
  EXPECT_EQ(::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), env.data()), 0);
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int test_port() {
  const char* p = std::getenv("KD_TEST_PORT");
  return p ? std::atoi(p) : 0;
}

std::shared_ptr<kd::dist::ProcessGroup> join(int rank, int port, double timeout_s = 60) {
  return kd::dist::ProcessGroup::create(
      kd::dist::ProcessGroupOptions().rank(rank).world_size(2).master_port(port).timeout_s(timeout_s));
}

// Rank 1 saves its `weights` to KD_TEST_OUT and gets nullopt (its part of the test ends there); rank 0 waits for
// rank 1 to exit cleanly and gets the weights it saved (none if it failed).
std::optional<std::vector<torch::Tensor>> weights_of_rank_1(int rank, pid_t child,
                                                            const std::vector<torch::Tensor>& weights,
                                                            const std::string& path) {
  if (rank == 1) {
    torch::save(weights, std::getenv("KD_TEST_OUT"));
    return std::nullopt;
  }
  std::vector<torch::Tensor> other;
  EXPECT_EQ(wait_exit_code(child), 0);
  if (std::filesystem::exists(path)) torch::load(other, path);
  return other;
}

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

// The W1 shape in miniature: hidden-state L2 through a learned projection (a loss-owned parameter)
// plus temperature KL, AdamW with weight decay, clipping, warmup, accumulation, and a last
// micro-batch smaller than the rest (100 examples, micro-batches of 24).
struct Workload {
  kd::data::TensorDataset data = synthetic(100, 21), validation = synthetic(61, 22);
  std::shared_ptr<MlpImpl> teacher_net, student_net;
  kd::FeatureL2 feature{nullptr};

  explicit Workload(int64_t seed) {
    torch::manual_seed(1);
    teacher_net = std::make_shared<MlpImpl>(24);
    torch::manual_seed(seed);
    student_net = std::make_shared<MlpImpl>(16);
    feature = kd::FeatureL2(kd::FeatureL2Options({{0, 0, 1.0, 16, 24}}));
  }
  std::vector<kd::Stage> stages(int64_t steps_a, int64_t steps_b) {
    kd::WeightedSum total({{"feat", feature, 1.0}, {"kl", kd::TemperatureKL(), 0.5}});
    std::vector<kd::Stage> s = {kd::Stage("feat", torch::nn::AnyModule(feature)).steps(steps_a).lr(0.01)};
    if (steps_b > 0) s.push_back(kd::Stage("all", torch::nn::AnyModule(total)).steps(steps_b).lr(0.01));
    return s;
  }
  kd::StagedTrainerOptions options() const {
    return kd::StagedTrainerOptions().batch_size(24).accumulation(2).warmup_steps(2).clip_norm(0.5).num_classes(4);
  }
};

TEST(ShardRange, SplitsContiguouslyWithSizesDifferingByAtMostOne) {
  using kd::dist::shard_range;
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_EQ(shard_range(10, 0, 1), (Range{0, 10}));
  EXPECT_EQ(shard_range(10, 0, 3), (Range{0, 4}));
  EXPECT_EQ(shard_range(10, 1, 3), (Range{4, 7}));
  EXPECT_EQ(shard_range(10, 2, 3), (Range{7, 10}));
  EXPECT_EQ(shard_range(1, 1, 2), (Range{1, 1}));  // an empty shard
}

TEST(DataParallel, EnvironmentIsReadAndBadValuesAreNamed) {
  if (my_rank() != 0) return;
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "1", 1);
  ::setenv("MASTER_ADDR", "10.1.2.3", 1);
  ::setenv("MASTER_PORT", "29123", 1);
  auto o = kd::dist::options_from_environment();
  EXPECT_EQ(o.world_size(), 2);
  EXPECT_EQ(o.rank(), 1);
  EXPECT_EQ(o.local_rank(), 1);
  EXPECT_EQ(o.master_addr(), "10.1.2.3");
  EXPECT_EQ(o.master_port(), 29123);
  ::setenv("RANK", "2", 1);
  kd::testing::expect_kd_error([] { kd::dist::options_from_environment(); }, kd::ErrorCategory::kConfig,
                               {"RANK='2' must be an integer in [0, 1]"});
  ::setenv("RANK", "0", 1);
  ::setenv("MASTER_PORT", "http", 1);
  kd::testing::expect_kd_error([] { kd::dist::options_from_environment(); }, kd::ErrorCategory::kConfig,
                               {"MASTER_PORT='http'"});
  for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(v);
}

TEST(DataParallel, TwoRanksTrainTheSameStudentAsOneProcessWithTheSameGlobalBatch) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  const std::string rank1_weights = kd::testing::temp_dir("dp-rank1") + "/weights.pt";
  pid_t child = rank == 0 ? spawn_rank_1(port, "KD_TEST_OUT=" + rank1_weights) : 0;

  Workload dp(7);
  auto group = join(rank, port);
  kd::StagedTrainer trainer(kd::Student(dp.student_net), kd::Teacher(dp.teacher_net), dp.stages(4, 5),
                            dp.options().process_group(group));
  // Rank 1 starts from other weights: the stage-start broadcast must replace them with rank 0's.
  if (rank == 1) {
    torch::NoGradGuard no_grad;
    for (auto& p : dp.student_net->parameters()) p.normal_();
  }
  const auto summary = trainer.fit(dp.data, &dp.validation);
  const auto eval = trainer.evaluate(dp.validation, "end", summary.steps);
  auto weights = snapshot(*dp.student_net);
  for (auto& p : dp.feature->parameters()) weights.push_back(p.detach().clone());
  const auto rank_1 = weights_of_rank_1(rank, child, weights, rank1_weights);
  if (!rank_1) return;
  const auto& other = *rank_1;

  Workload single(7);
  kd::StagedTrainer alone(kd::Student(single.student_net), kd::Teacher(single.teacher_net), single.stages(4, 5),
                          single.options());
  const auto alone_summary = alone.fit(single.data, &single.validation);
  auto expected = snapshot(*single.student_net);
  for (auto& p : single.feature->parameters()) expected.push_back(p.detach().clone());

  EXPECT_EQ(summary.steps, alone_summary.steps);
  ASSERT_EQ(weights.size(), expected.size());
  ASSERT_EQ(other.size(), expected.size());
  const auto initial = snapshot(*Workload(7).student_net);
  double moved = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_LT((weights[i] - expected[i]).abs().max().item<double>(), 1e-6);
    EXPECT_LT((other[i] - expected[i]).abs().max().item<double>(), 1e-6);
    if (i < initial.size()) moved = std::max(moved, (expected[i] - initial[i]).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-3);  // the comparison is about weights that training really changed
  // Evaluation: each rank scored half of the 61 examples, the confusion matrices were summed.
  const auto alone_eval = alone.evaluate(single.validation, "end", summary.steps);
  EXPECT_DOUBLE_EQ(eval.metrics.at("accuracy"), alone_eval.metrics.at("accuracy"));
  EXPECT_DOUBLE_EQ(eval.metrics.at("macro_f1"), alone_eval.metrics.at("macro_f1"));
}

// Token-mean losses over unevenly padded sequences (1 to 12 real tokens): each rank's shard of a micro-batch
// holds a different number of counted tokens, so only weighing each rank's mean by its count (LossResult::count),
// not by its examples, gives one process's step: the mean over every counted token of the global batch.
TEST(DataParallel, TwoRanksWithUnevenPaddingTrainTheSameStudentAsOneProcess) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  const std::string rank1_weights = kd::testing::temp_dir("dp-tokens-rank1") + "/weights.pt";
  pid_t child = rank == 0 ? spawn_rank_1(port, "KD_TEST_OUT=" + rank1_weights) : 0;

  const auto data = kd::testing::padded_tokens(40, 12, 11, 5);
  auto run = [&](std::shared_ptr<kd::dist::ProcessGroup> group) {
    torch::manual_seed(1);
    auto teacher = std::make_shared<kd::testing::TokenNetImpl>(11, 8);
    torch::manual_seed(2);
    auto student = std::make_shared<kd::testing::TokenNetImpl>(11, 6);
    kd::WeightedSum loss({{"kl", kd::TemperatureKL(kd::TemperatureKLOptions().temperature(2.0)), 0.5},
                          {"ce", kd::HardLabelCE(), 0.5}});
    auto options = kd::StagedTrainerOptions().batch_size(10).accumulation(2).clip_norm(0);
    if (group) options.process_group(group);
    kd::StagedTrainer trainer(kd::Student(student), kd::Teacher(teacher),
                              {kd::Stage("kd", torch::nn::AnyModule(loss)).steps(6).lr(0.05)}, options);
    trainer.fit(data);
    return snapshot(*student);
  };
  const auto weights = run(join(rank, port));
  const auto rank_1 = weights_of_rank_1(rank, child, weights, rank1_weights);
  if (!rank_1) return;
  const auto& other = *rank_1;
  const auto expected = run(nullptr);
  torch::manual_seed(2);
  const auto initial = snapshot(*std::make_shared<kd::testing::TokenNetImpl>(11, 6));
  ASSERT_EQ(weights.size(), expected.size());
  ASSERT_EQ(other.size(), expected.size());
  double moved = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_LT((weights[i] - expected[i]).abs().max().item<double>(), 1e-6);
    EXPECT_LT((other[i] - expected[i]).abs().max().item<double>(), 1e-6);
    moved = std::max(moved, (expected[i] - initial[i]).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-3);  // the comparison is about weights that training really changed
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// GradientSync on its own: buckets of one parameter each, so that they leave during backward; two micro-batches (the first unarmed, accumulated locally); a parameter
// only rank 0 uses and one no rank uses. Reference: one process running both ranks' inputs.
struct TinyNet {
  torch::Tensor w1, w2, only_rank0, unused;
  TinyNet() {
    torch::manual_seed(4);
    w1 = torch::randn({5, 3}, torch::kDouble).requires_grad_();
    w2 = torch::randn({3, 2}, torch::kDouble).requires_grad_();
    only_rank0 = torch::randn({2}, torch::kDouble).requires_grad_();
    unused = torch::randn({4}, torch::kDouble).requires_grad_();
  }
  // Buckets go in reverse: w2, w1, only_rank0, unused.
  std::vector<torch::Tensor> params() const { return {unused, only_rank0, w1, w2}; }
  // The loss of rank `r`'s micro-batch `m`.
  torch::Tensor loss(int r, int m) const {
    const auto x = torch::arange(10 * (2 * r + m), 10 * (2 * r + m) + 10, torch::kDouble).reshape({2, 5}) / 30.0;
    auto y = torch::tanh(x.matmul(w1)).matmul(w2);
    auto l = y.pow(2).sum();
    return r == 0 ? l + (y * only_rank0).sum() : l;
  }
};

TEST(DataParallel, GradientSyncSumsAccumulatedGradientsWhileBackwardRuns) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  pid_t child = rank == 0 ? spawn_rank_1(port) : 0;
  TinyNet net;
  auto group = join(rank, port);
  kd::dist::GradientSync sync(group, net.params(), kd::dist::GradientSyncOptions().first_bucket_bytes(1).bucket_bytes(1));
  EXPECT_EQ(sync.bucket_count(), 4);
  net.loss(rank, 0).backward();  // unarmed: accumulates locally
  sync.arm();
  const auto last = net.loss(rank, 1);
  last.backward();
  std::vector<torch::Tensor> extra = {last.detach().clone()};
  sync.finish(extra);
  // w2's and w1's buckets left during backward on both ranks, only_rank0's on rank 0 only (rank 1
  // sends its zeros in finish(), still third, so the ranks' exchanges pair up); `unused` never did.
  EXPECT_EQ(sync.buckets_sent_during_backward(), rank == 0 ? 3 : 2);

  TinyNet alone;
  torch::Tensor total = alone.loss(0, 0) + alone.loss(0, 1) + alone.loss(1, 0) + alone.loss(1, 1);
  total.backward();
  EXPECT_TRUE(torch::allclose(net.w1.grad(), alone.w1.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(net.w2.grad(), alone.w2.grad(), 1e-12, 1e-12));
  ASSERT_TRUE(net.only_rank0.grad().defined());  // rank 1 sent zeros for it
  EXPECT_TRUE(torch::allclose(net.only_rank0.grad(), alone.only_rank0.grad(), 1e-12, 1e-12));
  EXPECT_FALSE(net.unused.grad().defined());  // no rank had a gradient: still none
  EXPECT_NEAR(extra[0].item<double>(), (alone.loss(0, 1) + alone.loss(1, 1)).item<double>(), 1e-9);
  if (rank == 0) ASSERT_EQ(wait_exit_code(child), 0);
}

// Two ranks share the teacher forwards of the cache build: 100 examples in batches of 16 are 7
// batches, rank 0 runs 4 and rank 1 runs 3; the merged file must be byte for byte one process's.
TEST(DataParallel, TwoRanksBuildTheSameTeacherCacheAsOneProcess) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  const std::string dir = rank == 0 ? kd::testing::temp_dir("dp-cache") : std::getenv("KD_TEST_DIR");
  pid_t child = rank == 0 ? spawn_rank_1(port, "KD_TEST_DIR=" + dir) : 0;
  Workload w(3);
  kd::Teacher teacher(w.teacher_net);
  const auto options =
      kd::data::TeacherCacheOptions().hidden_states({0}).dtype(torch::kFloat16).batch_size(16);
  auto group = join(rank, port);
  auto cache = kd::data::TeacherCache::open_or_build(dir + "/two.cache", teacher, w.data, options, group.get());
  // Each rank reads the rows of the other's share from the merged file.
  const auto probe = torch::tensor({0, 63, 64, 99}, torch::kInt64);
  const auto direct = teacher->forward(w.data.inputs.index_select(0, probe));
  EXPECT_TRUE(torch::allclose(cache->lookup(probe).logits, direct.logits.to(torch::kFloat16).to(torch::kFloat32)));
  if (rank == 1) return;
  ASSERT_EQ(wait_exit_code(child), 0);

  kd::data::TeacherCache::build(dir + "/one.cache", teacher, w.data, options);
  const std::string two = file_bytes(dir + "/two.cache"), one = file_bytes(dir + "/one.cache");
  EXPECT_GT(one.size(), 4096u);
  EXPECT_TRUE(two == one) << "sizes " << two.size() << " and " << one.size();
  EXPECT_FALSE(std::filesystem::exists(dir + "/two.cache.part1"));  // the part was merged and removed
}

// A teacher whose process dies at its fifth forward (the third optimizer step, with accumulation
// 2), as a rank does when it is killed or runs out of memory.
struct DyingTeacherImpl : MlpImpl {
  DyingTeacherImpl() : MlpImpl(24) {}
  kd::ModelOutput forward(const torch::Tensor& x) override {
    if (++calls == 5) ::_exit(9);
    return MlpImpl::forward(x);
  }
  int calls = 0;
};

TEST(DataParallel, ARankThatDiesStopsTheOtherWithAClearErrorWithinTheTimeout) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  pid_t child = rank == 0 ? spawn_rank_1(port) : 0;
  Workload w(3);
  if (rank == 1) w.teacher_net = std::make_shared<DyingTeacherImpl>();
  constexpr double kTimeout = 20;
  auto group = join(rank, port, kTimeout);
  kd::StagedTrainer trainer(kd::Student(w.student_net), kd::Teacher(w.teacher_net), w.stages(50, 0),
                            w.options().process_group(group));
  const auto start = Clock::now();
  kd::testing::expect_kd_error([&] { trainer.fit(w.data); }, kd::ErrorCategory::kDistributed,
                               {"rank 0 of 2", "with the other ranks failed", "another rank probably stopped or died"});
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_LT(seconds, kTimeout);
  EXPECT_EQ(wait_exit_code(child), 9);
}

TEST(DataParallel, AnUnreachableRendezvousAndAPortInUseAreNamed) {
  if (my_rank() != 0) return;
  const int port = free_port();
  kd::testing::expect_kd_error(
      [&] {
        kd::dist::ProcessGroup::create(
            kd::dist::ProcessGroupOptions().rank(1).world_size(2).master_port(port).timeout_s(2));
      },
      kd::ErrorCategory::kDistributed,
      {"rank 1 could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + std::to_string(port),
       "check MASTER_ADDR and MASTER_PORT"});

  // Something else listens on the port rank 0 was told to use.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int busy = ntohs(addr.sin_port);
  kd::testing::expect_kd_error(
      [&] {
        kd::dist::ProcessGroup::create(
            kd::dist::ProcessGroupOptions().rank(0).world_size(2).master_port(busy).timeout_s(2));
      },
      kd::ErrorCategory::kDistributed,
      {"rank 0 could not start the rendezvous at MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + std::to_string(busy),
       "choose a free MASTER_PORT"});
  ::close(fd);

  // A network interface this machine does not have.
  ::setenv("GLOO_SOCKET_IFNAME", "kd-no-such-if", 1);
  kd::testing::expect_kd_error(
      [&] {
        kd::dist::ProcessGroup::create(kd::dist::ProcessGroupOptions().world_size(1).master_port(free_port()));
      },
      kd::ErrorCategory::kDistributed, {"the Gloo process group", "GLOO_SOCKET_IFNAME=kd-no-such-if"});
  ::unsetenv("GLOO_SOCKET_IFNAME");
}

TEST(DataParallel, ACheckpointOfTwoRanksResumesInOneProcess) {
  const int rank = my_rank();
  const int port = rank == 0 ? free_port() : test_port();
  const std::string dir = rank == 0 ? kd::testing::temp_dir("dp-resume") : std::getenv("KD_TEST_DIR");
  pid_t child = rank == 0 ? spawn_rank_1(port, "KD_TEST_DIR=" + dir) : 0;
  {
    // Two ranks train both stages, checkpointed (by rank 0) every 2 steps: 2, 4, 6, 8 and 9.
    Workload w(5);
    auto group = join(rank, port);
    kd::StagedTrainer two(kd::Student(w.student_net), kd::Teacher(w.teacher_net), w.stages(4, 5),
                          w.options().process_group(group).checkpoint_dir(dir).checkpoint_every(2).keep_last(5));
    two.fit(w.data);
  }
  if (rank == 1) return;
  ASSERT_EQ(wait_exit_code(child), 0);
  // Keep step 6, in the middle of stage "all": one process resumes there.
  int removed = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("ckpt-0000000008", 0) == 0 || name.rfind("ckpt-0000000009", 0) == 0) {
      std::filesystem::remove(f.path());
      ++removed;
    }
  }
  ASSERT_EQ(removed, 2);

  Workload resumed(99);  // other initial weights: the checkpoint must replace them
  auto summary = kd::StagedTrainer(kd::Student(resumed.student_net), kd::Teacher(resumed.teacher_net),
                                   resumed.stages(4, 5), resumed.options().checkpoint_dir(dir))
                     .fit(resumed.data, nullptr, /*resume=*/true);
  EXPECT_TRUE(summary.resumed);
  EXPECT_EQ(summary.resumed_from_step, 6);
  EXPECT_EQ(summary.steps, 9);

  Workload straight(5);
  kd::StagedTrainer(kd::Student(straight.student_net), kd::Teacher(straight.teacher_net), straight.stages(4, 5),
                    straight.options())
      .fit(straight.data);
  const auto a = snapshot(*straight.student_net), b = snapshot(*resumed.student_net);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT((a[i] - b[i]).abs().max().item<double>(), 1e-6) << i;
}

}  // namespace
