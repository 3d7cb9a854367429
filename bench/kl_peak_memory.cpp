// Peak memory of TemperatureKL's forward + backward on [B, L, V] float32 logits, CPU.
//
// Each configuration runs in a fresh child process (this executable re-run with --child), which
//   1. allocates the student logits (a leaf that requires grad) and the teacher logits,
//      N(0, 2²) float32 [B, L, V], and runs one tiny KL so LibTorch's lazy set-up is done;
//   2. reads VmRSS from /proc/self/status as the baseline and resets VmHWM (writes 5 to
//      /proc/self/clear_refs);
//   3. computes the loss and calls backward() once (the student's .grad is then allocated: it is
//      itself one logits-size, and it stays alive);
//   4. reads VmHWM: peak = VmHWM − baseline, reported in units of one logits tensor (B·L·V·4 bytes).
// So "peak" is the most resident memory the loss's forward + backward added on top of the two
// logits tensors, including the student gradient (1.0× by itself).
//
// Paths compared: "naive" = the textbook autograd form (log_softmax of both, exp, product, sum),
// and kd::functional::temperature_kl with chunk_size 0 (one chunk) and several chunk sizes.
//
// Exit status: 0 when the default path (forward KL, TemperatureKLOptions's default chunk_size, no
// mask) peaked at most 1.3x one logits tensor in every run (the target), 1 when it peaked
// higher or any child failed; the measured ratio is printed on the last line.
//
// Usage: bench_kl_peak_memory [--B 8] [--L 512] [--V 32000] [--T 2] [--repeat 2] [--only-default 1]
//   --only-default 1 runs just the default path (a quick check of the target).
#include <fmt/format.h>
#include <limits.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kd/losses/temperature_kl.h"
#include "peak_memory.h"

namespace {

using kd::bench::reset_peak;
using kd::bench::status_kib;

struct Config {
  std::string path;     // "naive" or "kd"
  std::string mode;     // fwd, rev, jsd
  int64_t chunk = 0;    // kd only
  bool masked = false;  // the last 10% of every sequence is padding (batch.mask = 0 there)
};

kd::KLMode parse_mode(const std::string& m) {
  if (m == "rev") return kd::KLMode::kReverse;
  if (m == "jsd") return kd::KLMode::kJSD;
  return kd::KLMode::kForward;
}

int child(const Config& c, int64_t B, int64_t L, int64_t V, double T) {
  torch::manual_seed(0);
  auto zs = (torch::randn({B, L, V}) * 2).requires_grad_(true);
  auto zt = torch::randn({B, L, V}) * 2;
  auto mask = torch::ones({B, L});
  if (c.masked) mask.narrow(1, L - L / 10, L / 10).zero_();
  {  // LibTorch's lazy initialisation (thread pools, kernels) outside the measurement.
    auto a = torch::randn({4, 16}).requires_grad_(true);
    kd::functional::temperature_kl(a, torch::randn({4, 16}), kd::TemperatureKLOptions().chunk_size(2)).backward();
    auto l = torch::log_softmax(a / T, -1);
    (l.exp() * l).sum().backward();
  }
  const int64_t baseline_kib = status_kib("VmRSS");
  const bool reset = reset_peak();
  const auto t0 = std::chrono::steady_clock::now();
  torch::Tensor loss;
  if (c.path == "naive") {
    const auto log_ps = torch::log_softmax(zs / T, -1);
    const auto log_pt = torch::log_softmax(zt / T, -1);
    loss = (log_pt.exp() * (log_pt - log_ps)).sum() * (T * T / static_cast<double>(B * L));
  } else {
    loss = kd::functional::temperature_kl(
        zs, zt, c.masked ? mask : torch::Tensor(),
        kd::TemperatureKLOptions().temperature(T).mode(parse_mode(c.mode)).chunk_size(c.chunk));
  }
  loss.backward();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t hwm_kib = status_kib("VmHWM");
  // The gradient must exist (and be one logits-size) for the number to mean what it says.
  if (!zs.grad().defined() || zs.grad().numel() != zs.numel()) return 2;
  std::cout << fmt::format("{} {} {} {:.4f} {:.9g}\n", baseline_kib, hwm_kib, reset ? 1 : 0, seconds,
                           loss.item<double>());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t B = 8, L = 512, V = 32000;
  double T = 2.0;
  int repeat = 2;
  bool only_default = false;
  Config child_config;
  bool is_child = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--B")
      B = std::stoll(v);
    else if (k == "--L")
      L = std::stoll(v);
    else if (k == "--V")
      V = std::stoll(v);
    else if (k == "--T")
      T = std::stod(v);
    else if (k == "--repeat")
      repeat = std::stoi(v);
    else if (k == "--only-default")
      only_default = v != "0";
    else if (k == "--child") {
      is_child = true;
      std::istringstream in(v);
      std::string chunk;
      std::getline(in, child_config.path, ':');
      std::getline(in, child_config.mode, ':');
      std::string masked;
      std::getline(in, chunk, ':');
      std::getline(in, masked, ':');
      child_config.chunk = std::stoll(chunk);
      child_config.masked = masked == "masked";
    } else {
      std::cerr << "usage: " << argv[0] << " [--B 8] [--L 512] [--V 32000] [--T 2] [--repeat 2] [--only-default 1]\n";
      return 1;
    }
  }
  if (is_child) return child(child_config, B, L, V, T);

  char exe[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 1;
  exe[n] = '\0';
  const double logits_mib = static_cast<double>(B * L * V * 4) / (1 << 20);
  std::cout << fmt::format(
      "TemperatureKL forward+backward peak memory, [B, L, V] = [{}, {}, {}] float32, T = {}, "
      "CPU, {} threads\n",
      B, L, V, T, torch::get_num_threads());
  std::cout << fmt::format(
      "one logits tensor = {:.1f} MiB; peak = VmHWM - VmRSS before the loss, in logits "
      "sizes (includes the student gradient, 1.00x by itself)\n",
      logits_mib);
  std::cout << fmt::format(
      "{} runs per row (min – max); MALLOC_MMAP_THRESHOLD_ = {}\n\n", repeat,
      std::getenv("MALLOC_MMAP_THRESHOLD_") ? std::getenv("MALLOC_MMAP_THRESHOLD_") : "unset (glibc default)");
  std::cout << "| path | mode | chunk_size (rows) | mask | peak (MiB) | peak / logits | time (s) | loss |\n";
  std::cout << "|---|---|---|---|---|---|---|---|\n";
  const int64_t default_chunk = kd::TemperatureKLOptions().chunk_size();
  constexpr double kTarget = 1.3;  // the bound on the default path, in logits sizes
  std::vector<Config> configs{{"naive", "fwd", 0},       {"kd", "fwd", 0},   {"kd", "fwd", 1024},
                              {"kd", "fwd", 256},        {"kd", "fwd", 128}, {"kd", "fwd", default_chunk},
                              {"kd", "fwd", 32},         {"kd", "fwd", default_chunk, true},
                              {"kd", "rev", default_chunk}, {"kd", "jsd", default_chunk},
                              {"kd", "rev", 0},          {"kd", "jsd", 0}};
  if (only_default) configs = {{"kd", "fwd", default_chunk}};
  int rc = 0;
  double default_ratio = -1.0;  // the highest run of the default path, in logits sizes
  for (const auto& c : configs) {
    const std::string cmd = fmt::format("{} --B {} --L {} --V {} --T {} --child {}:{}:{}:{}", exe, B, L, V, T, c.path,
                                        c.mode, c.chunk, c.masked ? "masked" : "all");
    double lo = 1e300, hi = 0, t_lo = 1e300, t_hi = 0, loss = 0;
    bool all_reset = true, failed = false;
    for (int r = 0; r < repeat && !failed; ++r) {
      FILE* pipe = ::popen(cmd.c_str(), "r");
      char buf[512] = {0};
      const bool got = pipe && std::fgets(buf, sizeof buf, pipe);
      const int status = pipe ? ::pclose(pipe) : -1;
      int64_t base = 0, hwm = 0;
      int reset = 0;
      double seconds = 0;
      if (!got || status != 0 || std::sscanf(buf, "%ld %ld %d %lf %lf", &base, &hwm, &reset, &seconds, &loss) != 5) {
        std::cout << fmt::format("| {} | {} | {} | {} | child failed (status {}) |\n", c.path, c.mode, c.chunk,
                                 c.masked ? "masked" : "none", status);
        rc = 1;
        failed = true;
        break;
      }
      const double peak_mib = static_cast<double>(hwm - base) / 1024.0;
      lo = std::min(lo, peak_mib);
      hi = std::max(hi, peak_mib);
      t_lo = std::min(t_lo, seconds);
      t_hi = std::max(t_hi, seconds);
      all_reset = all_reset && reset;
    }
    if (failed) continue;
    if (c.path == "kd" && c.mode == "fwd" && c.chunk == default_chunk && !c.masked) default_ratio = hi / logits_mib;
    std::cout << fmt::format(
        "| {} | {} | {} | {} | {:.1f} – {:.1f} | {:.2f}x – {:.2f}x | {:.2f} – {:.2f} | {:.6f} |{}\n", c.path, c.mode,
        c.path == "naive" ? "-"
                          : (c.chunk == 0 ? std::string("0 (unchunked)")
                                          : std::to_string(c.chunk) + (c.chunk == default_chunk ? " (default)" : "")),
        c.masked ? "last 10% of L padded" : "none", lo, hi, lo / logits_mib, hi / logits_mib, t_lo, t_hi, loss,
        all_reset ? "" : " (VmHWM not reset: peak includes set-up)");
  }
  if (default_ratio < 0) {
    std::cout << fmt::format("\ndefault path (forward KL, chunk_size {}): no measurement; FAIL\n", default_chunk);
    return 1;
  }
  const bool ok = default_ratio <= kTarget;
  std::cout << fmt::format("\ndefault path (forward KL, chunk_size {}, no mask): peak {:.3f}x the logits' size "
                           "(highest of {} runs), target <= {:.1f}x: {}\n",
                           default_chunk, default_ratio, repeat, kTarget, ok ? "OK" : "FAIL");
  return ok ? rc : 1;
}
