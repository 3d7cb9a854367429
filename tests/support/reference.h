#pragma once
// Test support: PyTorch references produced by /usr/bin/python3 at test time.
//
// A parity script tests/parity/<name>.py writes a JSON file of named tensors
// (float64 values, exact shapes) with kdref.save(); the test loads it here,
// feeds the same inputs to kdistill and compares with the saved outputs.

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace kd::testing {

/// Named tensors read from a reference file (float64 unless stored as int64).
class Reference {
 public:
  explicit Reference(const std::string& json_path);
  torch::Tensor operator[](const std::string& name) const;
  double scalar(const std::string& name) const { return (*this)[name].item<double>(); }
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }

 private:
  std::string path_;
  std::map<std::string, torch::Tensor> tensors_;
};

/// Runs `/usr/bin/python3 tests/parity/<script> <out_dir> [args...]` and
/// fails the test (with Python's output) if it does not exit 0.
/// Returns `out_dir`, created under the build tree.
std::string run_python(const std::string& script, const std::vector<std::string>& args = {});

/// A fresh empty directory under the build tree, unique per call.
std::string temp_dir(const std::string& tag);

/// max |a - b| / max(1, |b|) elementwise.
double max_rel_error(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace kd::testing
