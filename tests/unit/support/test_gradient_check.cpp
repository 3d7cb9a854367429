// kd::testing::expect_gradients_match: silent on a correct gradient, a failure naming the element on a wrong one.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gradient_check.h"

namespace {

TEST(GradientCheck, AcceptsAutogradOnASmoothFunctionOfSeveralInputs) {
  auto x = torch::tensor({0.5, -1.0, 2.0}, torch::kFloat64).requires_grad_(true);
  auto w = torch::tensor({{1.5, -0.5}, {0.25, 2.0}, {-1.0, 0.75}}, torch::kFloat64).requires_grad_(true);
  kd::testing::expect_gradients_match([&] { return torch::tanh(x.matmul(w)).pow(2).sum() + x.exp().sum(); },
                                      {{"x", x}, {"w", w}});
  EXPECT_FALSE(x.grad().defined());  // the check leaves the inputs' .grad() alone
}

// d/dx of (2·stop_gradient(x) + x) is 3, but autograd sees only the second term and says 1.
void check_a_gradient_autograd_gets_wrong() {
  auto x = torch::tensor({0.5}, torch::kFloat64).requires_grad_(true);
  kd::testing::expect_gradients_match([&] { return (x.detach() * 2 + x).sum(); }, {{"x", x}});
}

TEST(GradientCheck, ReportsTheElementWhoseGradientIsWrong) {
  EXPECT_NONFATAL_FAILURE(check_a_gradient_autograd_gets_wrong(), "x[0]");
}

}  // namespace
