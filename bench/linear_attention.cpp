// Softmax against linear self-attention (kd::models::MultiHeadSelfAttention vs LinearSelfAttention, the
// surrogate off) over sequence lengths: time of one forward + backward of one layer and its peak memory.
//
// Each (kind, L) runs in a fresh child process (this program started again with --child), so one
// measurement's allocations cannot hide in another's: the child builds the layer and x [B, L, D] (a leaf
// that requires grad), warms LibTorch up on a short input, resets VmHWM, then runs forward + backward
// `repeat` times; it reports the fastest time and VmHWM − VmRSS-before (the most memory the layer's
// forward and backward added: activations kept for backward, scores, gradients).
//
// Usage: bench_linear_attention [--lengths 128,256,512,1024,2048,4096] [--d 128] [--heads 4] [--batch 1]
//                               [--repeat 3] [--threads 1]
// Prints a JSON line per measurement and a Markdown table with the softmax / linear ratios.
#include <limits.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kd/models/attention.h"
#include "kd/models/linear_attention.h"
#include "peak_memory.h"

namespace {

struct Args {
  std::vector<int64_t> lengths{128, 256, 512, 1024, 2048, 4096};
  int64_t d = 128, heads = 4, batch = 1;
  int repeat = 3, threads = 1;
};

int child(const Args& a, const std::string& kind, int64_t L) {
  torch::set_num_threads(a.threads);
  torch::manual_seed(0);
  std::function<torch::Tensor(const torch::Tensor&, const kd::models::RotaryTables&)> layer;
  if (kind == "softmax") {
    auto m = kd::models::MultiHeadSelfAttention(kd::models::MultiHeadSelfAttentionOptions(a.d, a.heads));
    layer = [m](const torch::Tensor& x, const kd::models::RotaryTables& r) mutable { return m->forward(x, r).output; };
  } else {
    auto m = kd::models::LinearSelfAttention(kd::models::LinearSelfAttentionOptions(a.d, a.heads).surrogate(false));
    layer = [m](const torch::Tensor& x, const kd::models::RotaryTables& r) mutable { return m->forward(x, r).output; };
  }
  const int64_t dh = a.d / a.heads;
  {  // lazy initialisation (thread pools, kernels) outside the measurement
    auto x = torch::randn({1, 8, a.d}).requires_grad_(true);
    layer(x, kd::models::rotary_tables(8, dh, 10000.0, x.options())).sum().backward();
  }
  auto x = torch::randn({a.batch, L, a.d}).requires_grad_(true);
  const auto rope = kd::models::rotary_tables(L, dh, 10000.0, x.options());
  const bool reset = kd::bench::reset_peak();
  const int64_t base = kd::bench::status_kib("VmRSS");
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < a.repeat; ++r) {
    x.mutable_grad() = torch::Tensor();
    const auto t0 = std::chrono::steady_clock::now();
    layer(x, rope).sum().backward();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const int64_t hwm = kd::bench::status_kib("VmHWM");
  std::cout << fmt::format(
      "{{\"bench\":\"linear_attention\",\"kind\":\"{}\",\"L\":{},\"batch\":{},\"d_model\":{},\"heads\":{},\"threads\":{},"
      "\"fwd_bwd_ms\":{:.3f},\"peak_mib\":{:.2f},\"peak_reset\":{}}}\n",
      kind, L, a.batch, a.d, a.heads, a.threads, 1e3 * best, (hwm - base) / 1024.0, reset ? "true" : "false");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::string child_spec;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--lengths") {
      a.lengths.clear();
      std::istringstream in(v);
      for (std::string part; std::getline(in, part, ',');) a.lengths.push_back(std::stoll(part));
    } else if (k == "--d") {
      a.d = std::stoll(v);
    } else if (k == "--heads") {
      a.heads = std::stoll(v);
    } else if (k == "--batch") {
      a.batch = std::stoll(v);
    } else if (k == "--repeat") {
      a.repeat = std::stoi(v);
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else if (k == "--child") {
      child_spec = v;
    } else {
      std::cerr << "usage: " << argv[0]
                << " [--lengths 128,256,...] [--d 128] [--heads 4] [--batch 1] [--repeat 3] [--threads 1]\n";
      return 1;
    }
  }
  if (!child_spec.empty()) {
    const auto colon = child_spec.find(':');
    return child(a, child_spec.substr(0, colon), std::stoll(child_spec.substr(colon + 1)));
  }

  char exe[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 1;
  exe[n] = '\0';
  std::map<std::pair<std::string, int64_t>, std::pair<double, double>> got;  // (kind, L) -> (ms, MiB)
  for (const int64_t L : a.lengths) {
    for (const std::string kind : {"softmax", "linear"}) {
      const std::string cmd =
          fmt::format("'{}' --child {}:{} --d {} --heads {} --batch {} --repeat {} --threads {}", exe, kind, L, a.d,
                      a.heads, a.batch, a.repeat, a.threads);
      std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
      if (!pipe) return 1;
      std::string line;
      char buf[4096];
      while (std::fgets(buf, sizeof buf, pipe.get())) line += buf;
      std::cout << line << std::flush;
      auto field = [&](const std::string& key) {
        const auto at = line.find("\"" + key + "\":");
        return at == std::string::npos ? -1.0 : std::stod(line.substr(at + key.size() + 3));
      };
      got[{kind, L}] = {field("fwd_bwd_ms"), field("peak_mib")};
    }
  }
  std::cout << fmt::format("\none attention layer, d_model {}, {} heads, batch {}, {} thread(s); forward + backward, "
                           "fastest of {}; peak = VmHWM − VmRSS before\n\n",
                           a.d, a.heads, a.batch, a.threads, a.repeat);
  std::cout << "| L | softmax ms | linear ms | softmax / linear time | softmax MiB | linear MiB | softmax / linear memory |\n"
               "|---|---|---|---|---|---|---|\n";
  for (const int64_t L : a.lengths) {
    const auto s = got[{"softmax", L}], l = got[{"linear", L}];
    std::cout << fmt::format("| {} | {:.2f} | {:.2f} | {:.2f} | {:.1f} | {:.1f} | {:.2f} |\n", L, s.first, l.first,
                             s.first / l.first, s.second, l.second, l.second > 0 ? s.second / l.second : 0.0);
  }
  return 0;
}
