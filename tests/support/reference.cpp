#include "reference.h"

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

namespace kd::testing {
namespace fs = std::filesystem;

Reference::Reference(const std::string& json_path) : path_(json_path) {
  std::ifstream in(json_path);
  if (!in) throw std::runtime_error("reference file missing: " + json_path);
  nlohmann::json j = nlohmann::json::parse(in);
  for (auto& [name, v] : j.items()) {
    std::vector<int64_t> shape = v.at("shape").get<std::vector<int64_t>>();
    const bool is_int = v.value("dtype", "float64") == "int64";
    if (is_int) {
      auto data = v.at("data").get<std::vector<int64_t>>();
      tensors_[name] = torch::tensor(data, torch::kInt64).reshape(shape).clone();
    } else {
      auto data = v.at("data").get<std::vector<double>>();
      tensors_[name] = torch::tensor(data, torch::kFloat64).reshape(shape).clone();
    }
  }
}

torch::Tensor Reference::operator[](const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error("reference " + path_ + " has no '" + name + "'");
  return it->second;
}

std::string temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  fs::path dir = fs::path(KD_TEST_TMP) /
                 (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string run_python(const std::string& script, const std::vector<std::string>& args) {
  std::string out_dir = temp_dir(fs::path(script).stem().string());
  std::string cmd = std::string(KD_PYTHON) + " " + KD_PARITY_DIR + "/" + script + " " + out_dir;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  std::string output;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) {
    ADD_FAILURE() << "cannot start " << cmd;
    return out_dir;
  }
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  int status = ::pclose(pipe);
  EXPECT_EQ(status, 0) << "parity script failed: " << cmd << "\n" << output;
  return out_dir;
}

double max_rel_error(const torch::Tensor& a, const torch::Tensor& b, double atol) {
  const auto a64 = a.detach().to(torch::kCPU, torch::kFloat64);
  const auto b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  if (a64.sizes() != b64.sizes()) return std::numeric_limits<double>::infinity();
  if (a64.numel() == 0) return 0.0;
  const auto excess = ((a64 - b64).abs() - atol).clamp_min(0.0);
  // NaN anywhere (a mismatch of finiteness, or NaN in both) is a failure, not a pass.
  if (!torch::isfinite(a64).equal(torch::isfinite(b64)) || torch::isnan(a64).any().item<bool>() ||
      torch::isnan(b64).any().item<bool>()) {
    return std::numeric_limits<double>::infinity();
  }
  // Elements where both are the same infinity count as equal.
  const auto same = a64 == b64;
  auto ratio = excess / b64.abs();  // x/0 = inf, 0/0 = NaN
  ratio = torch::where(same | (excess == 0), torch::zeros_like(ratio), ratio);
  return ratio.max().item<double>();
}

}  // namespace kd::testing
