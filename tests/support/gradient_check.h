#pragma once
// Test support: autograd gradients checked against central differences in float64 (flashlight's
// jacobianTestImpl is the model), for losses, policies and layers alike.

#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace kd::testing {

/// A tensor whose gradient is checked, and the name a failure reports ("log_vars", "x", "proj.0.weight").
struct GradientInput {
  std::string name;
  torch::Tensor tensor;  ///< float64, requires grad; `f` must read it (in place perturbations reach `f`)
};

/// Expects the autograd gradient of the scalar `f()` with respect to each input to match, element by
/// element, the central difference
///
///   numeric_i = (f(x + h·e_i) − f(x − h·e_i)) / (2h),   |analytic_i − numeric_i| ≤ tol·max(1, |numeric_i|),
///
/// failing with the input's name and the flat element index. The analytic gradients come from
/// torch::autograd::grad, so the inputs' .grad() fields are left alone; each element is restored after
/// its two evaluations. Inputs must be float64 (single precision cannot resolve h = 1e-6).
///
/// Example:
/// ```
/// auto x = torch::randn({3}, torch::kFloat64).requires_grad_(true);
/// kd::testing::expect_gradients_match([&] { return x.pow(3).sum(); }, {{"x", x}});
/// ```
void expect_gradients_match(const std::function<torch::Tensor()>& f, const std::vector<GradientInput>& inputs,
                            double h = 1e-6, double tol = 1e-7);

/// The module's named parameters as inputs, e.g. for `expect_gradients_match(loss, parameters_of(*feat))`.
std::vector<GradientInput> parameters_of(const torch::nn::Module& module);

}  // namespace kd::testing
