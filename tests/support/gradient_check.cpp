#include "gradient_check.h"

#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

namespace kd::testing {

void expect_gradients_match(const std::function<torch::Tensor()>& f, const std::vector<GradientInput>& inputs,
                            double h, double tol) {
  std::vector<torch::Tensor> leaves;
  for (const auto& in : inputs) {
    ASSERT_EQ(in.tensor.scalar_type(), torch::kFloat64) << in.name << ": central differences need float64";
    ASSERT_TRUE(in.tensor.requires_grad()) << in.name << " does not require grad";
    leaves.push_back(in.tensor);
  }
  const auto analytic = torch::autograd::grad({f()}, leaves, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                              /*create_graph=*/false, /*allow_unused=*/true);
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < inputs.size(); ++k) {
    auto flat = inputs[k].tensor.view({-1});
    const auto expected = analytic[k].defined() ? analytic[k].reshape({-1}) : torch::zeros_like(flat);
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double x0 = flat[i].item<double>();
      flat[i].fill_(x0 + h);
      const double up = f().item<double>();
      flat[i].fill_(x0 - h);
      const double down = f().item<double>();
      flat[i].fill_(x0);
      const double numeric = (up - down) / (2 * h);
      EXPECT_NEAR(expected[i].item<double>(), numeric, tol * std::max(1.0, std::abs(numeric)))
          << inputs[k].name << "[" << i << "]";
    }
  }
}

std::vector<GradientInput> parameters_of(const torch::nn::Module& module) {
  std::vector<GradientInput> out;
  for (const auto& p : module.named_parameters()) out.push_back({p.key(), p.value()});
  return out;
}

}  // namespace kd::testing
