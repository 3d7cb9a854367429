#pragma once
// Test support: PyTorch references produced by /usr/bin/python3 at test time.
//
// A parity script tests/parity/<name>.py writes a JSON file of named tensors
// (float64 values, exact shapes) with kdref.save(); the test loads it here,
// feeds the same inputs to kdistill and compares with the saved outputs.

#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::testing {

/// Expects `fn()` to throw kd::Error of `category` whose message contains each of `pieces`.
/// Example: `expect_kd_error([&] { f(); }, kd::ErrorCategory::kConfig, {"RANK='2'", "[0, 1]"});`
template <typename Fn>
void expect_kd_error(Fn fn, kd::ErrorCategory category, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected kd::Error (" << kd::to_string(category) << ")";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), category) << e.what();
    for (const auto& p : pieces) EXPECT_THAT(e.what(), ::testing::HasSubstr(p));
  }
}

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

/// The elementwise relative error of `a` against the reference `b`, beyond an absolute floor:
///
///   max_i (|a_i − b_i| − atol)₊ / |b_i|     (0/0 = 0, x/0 = +inf for x > 0),
///
/// computed in float64, so `max_rel_error(a, b) < rtol` holds exactly when every element
/// satisfies |a_i − b_i| < rtol·|b_i| + atol (numpy.isclose's rule, strict). The default
/// atol = 1e-12 only forgives float64 round-off on elements that are (near) zero, e.g. a
/// gradient entry of 1e-17 against an exact 0; every element of non-negligible size is held
/// to the relative tolerance, whatever its magnitude (no max(1, |b|) denominator, which
/// would make small values absolute). Comparisons of float32 computations against float64
/// references need a larger atol, given explicitly at the call site with the reason.
/// Different shapes give +inf.
///
/// Example: `EXPECT_LT(max_rel_error(loss, ref["loss"]), 1e-6);   // float64: 1e-6 relative`
double max_rel_error(const torch::Tensor& a, const torch::Tensor& b, double atol = 1e-12);

/// The atol for float32 computations checked against float64 references (or against another
/// float32 summation order): round-off of about 1e-6 on O(1) activations, so elements near zero
/// are held to this absolute tolerance. Example: `max_rel_error(out32, ref64, kFloat32Atol) < 1e-5`.
constexpr double kFloat32Atol = 1e-5;

}  // namespace kd::testing
