/// \file
/// kd-bench: issue 7's distillation workloads timed step by step, one JSON line per run.
///
///   kd-bench --workload w1|w2|w3 --steps N [--mode online|cached] [--warmup W] [--threads T]
///            [--inference-mode 0|1] [--fold-bn 0|1] [--channels-last 0|1] [--mkldnn 0|1] [--kl fused|chunked|autograd]
///   kd-bench --workload sgemm [--size 2048] [--steps 10]
///   kd-bench --workload w2 --steps 4 --profile w2.trace.json   (then bench/profile_ops.py)
///
/// Thread settings: `--threads` sets ATen's intra-op pool; unless OMP_WAIT_POLICY is already set
/// (or `--omp-passive 0`), kd-bench re-executes itself once with OMP_WAIT_POLICY=PASSIVE, because
/// libgomp reads it before main(): spinning OpenMP workers otherwise take the cores OpenBLAS's own
/// pthreads need for the matmuls that follow (3× slower steps measured on 2 cores, RESULTS.md).
///
/// Data are synthetic (random images / byte tokens of the stated shapes, a pool of `--pool`
/// batches cycled); weights are random (they cost the same as trained ones). Warm-up steps are
/// run first and not timed. achieved_gflops = flops_per_step · steps / seconds with the analytic
/// count of flops.h: teacher forward 1× (0 when cached), student forward + backward 3× its
/// forward; matmul 2·m·n·k, conv 2·C_out·H·W·C_in·k²/groups per image, attention QKᵀ and PV
/// 2·L²·D each per sequence. sgemm: the best of `--steps` at::mm of two square float32 matrices,
/// 2·n³ FLOPs each. peak_rss_mb: getrusage's ru_maxrss.
/// bench/python/kd_bench.py prints the same line for the same workloads in plain PyTorch.

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "workloads.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// OMP_WAIT_POLICY=PASSIVE for this process: libgomp reads it when it loads, so set it and exec again.
void ensure_passive_omp(int argc, char** argv) {
  bool wanted = true;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--omp-passive") wanted = std::string(argv[i + 1]) != "0";
  }
  if (!wanted || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

nlohmann::json sgemm(int64_t n, int reps) {
  torch::manual_seed(0);
  const auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::mm(a, b);  // warm-up (BLAS threads, page faults)
  double best = 1e30;
  for (int i = 0; i < std::max(1, reps); ++i) {
    const auto t = Clock::now();
    torch::mm_out(c, a, b);
    best = std::min(best, seconds_since(t));
  }
  const double gflops = 2.0 * n * n * n / best / 1e9;
  return {{"workload", "sgemm"}, {"impl", "cpp"}, {"size", n}, {"reps", reps}, {"best_s", best}, {"gflops", gflops}};
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp(argc, argv);
  CLI::App app{"kd-bench: issue 7's distillation workloads (W1 vision, W2 encoder, W3 causal LM), one JSON line per run"};
  kd::bench::BenchOptions o;
  int64_t steps = 20, warmup = 3, size = 2048;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--workload", o.workload, "w1, w2, w3, or sgemm (the machine's float32 matmul peak)")
      ->check(CLI::IsMember({"w1", "w2", "w3", "sgemm"}));
  app.add_option("--steps", steps, "timed steps (sgemm: repetitions)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--mode", o.mode, "online, or cached (W1: teacher outputs from kd::data::TeacherCache)")
      ->check(CLI::IsMember({"online", "cached"}));
  app.add_option("--threads", threads, "intra-op threads (at::set_num_threads); default: hardware threads")
      ->check(CLI::PositiveNumber);
  app.add_option("--inference-mode", o.inference_mode, "teacher under c10::InferenceMode (1) or no-grad only (0)");
  app.add_option("--fold-bn", o.fold_bn, "W1: fold BatchNorm into the frozen teacher's convs");
  app.add_option("--channels-last", o.channels_last, "W1: frozen teacher in channels-last layout");
  app.add_option("--mkldnn", o.mkldnn, "W1: frozen teacher on prepacked oneDNN weights / MKL-DNN tensors");
  app.add_option("--kl", o.kl, "fused, chunked (64 rows) or autograd (textbook)")
      ->check(CLI::IsMember({"fused", "chunked", "autograd"}));
  app.add_option("--pool", o.pool_batches, "distinct synthetic batches, cycled")->check(CLI::PositiveNumber);
  bool omp_passive = true;
  app.add_option("--omp-passive", omp_passive, "re-run under OMP_WAIT_POLICY=PASSIVE unless it is set (thread setting)");
  app.add_option("--size", size, "sgemm: matrix size n")->check(CLI::PositiveNumber);
  std::string profile_path;
  app.add_option("--profile", profile_path,
                 "write the timed steps' operator trace (LibTorch's profiler, Chrome trace format) to this file; "
                 "bench/profile_ops.py sums it per operator");
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::warn);  // stdout carries only the JSON line
  torch::set_num_threads(threads);
  if (o.workload == "sgemm") {
    auto j = sgemm(size, static_cast<int>(steps));
    j["threads"] = torch::get_num_threads();
    j["omp_wait_policy"] = std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "";
    // Recorded, never changed: some machines pin OpenBLAS's kernels here for correctness (RESULTS.md).
    j["openblas_coretype"] = std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "";
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }

  const auto build_start = Clock::now();
  auto w = kd::bench::make_workload(o);
  const double build_s = seconds_since(build_start);
  kd::bench::PhaseTimes ignored, times;
  double loss = 0.0;
  for (int64_t s = 0; s < warmup; ++s) loss = w->step(s, ignored);
  // The legacy profiler: its Chrome trace has the same layout as Python's
  // torch.autograd.profiler.profile(use_kineto=False).export_chrome_trace, so one script reads both.
  auto profile = profile_path.empty() ? nullptr
                                      : std::make_unique<torch::autograd::profiler::RecordProfile>(profile_path);
  const auto start = Clock::now();
  for (int64_t s = 0; s < steps; ++s) loss = w->step(warmup + s, times);
  const double elapsed = seconds_since(start);
  profile.reset();  // writes the trace

  const double per_step_ms = 1e3 / static_cast<double>(steps);
  nlohmann::json j = {
      {"workload", o.workload},
      {"mode", o.mode},
      {"impl", "cpp"},
      {"threads", torch::get_num_threads()},
      {"steps", steps},
      {"warmup", warmup},
      {"batch", w->batch_size()},
      {"seconds", elapsed},
      {"steps_per_s", steps / elapsed},
      {"samples_per_s", steps * w->batch_size() / elapsed},
      {"flops_per_step", w->flops_per_step()},
      {"achieved_gflops", w->flops_per_step() * steps / elapsed / 1e9},
      {"peak_rss_mb", peak_rss_mb()},
      {"loss", loss},
      {"setup_s", build_s},
      {"cache_build_s", w->setup_seconds()},
      {"omp_wait_policy", std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : ""},
      {"openblas_coretype", std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : ""},
      {"options",
       {{"inference_mode", o.inference_mode}, {"fold_bn", o.fold_bn}, {"channels_last", o.channels_last}, {"mkldnn", o.mkldnn}, {"kl", o.kl}}},
      {"phase_ms",
       {{"teacher", times.teacher * per_step_ms},
        {"student_forward", times.student * per_step_ms},
        {"loss", times.loss * per_step_ms},
        {"backward", times.backward * per_step_ms},
        {"optimizer", times.optimizer * per_step_ms}}},
  };
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
