// WarmupCosine equals PyTorch's SequentialLR(LinearLR, CosineAnnealingLR) step for step.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/lr_schedule.h"
#include "reference.h"

namespace {

TEST(WarmupCosine, MatchesPyTorchSchedulers) {
  kd::testing::Reference ref(kd::testing::run_python("lr_schedule.py") + "/lr.json");
  for (const char* name : {"a", "b", "c"}) {
    SCOPED_TRACE(name);
    auto cfg = ref[std::string(name) + "_cfg"];
    auto lrs = ref[std::string(name) + "_lrs"];
    kd::WarmupCosine s(kd::WarmupCosineOptions(cfg[0].item<double>(), cfg[1].item<int64_t>())
                           .warmup_steps(cfg[2].item<int64_t>())
                           .start_factor(cfg[3].item<double>())
                           .min_lr(cfg[4].item<double>()));
    for (int64_t step = 0; step < lrs.numel(); ++step) {
      const double expected = lrs[step].item<double>();
      EXPECT_NEAR(s.at(step), expected, 1e-9 * std::max(1.0, std::abs(expected))) << "step " << step;
    }
  }
}

TEST(WarmupCosine, ClosedFormEndpointsAndApply) {
  kd::WarmupCosine s(kd::WarmupCosineOptions(1.0, 10).warmup_steps(2).start_factor(0.5).min_lr(0.1));
  EXPECT_DOUBLE_EQ(s.at(0), 0.5);
  EXPECT_DOUBLE_EQ(s.at(1), 0.75);
  EXPECT_DOUBLE_EQ(s.at(2), 1.0);
  EXPECT_DOUBLE_EQ(s.at(6), 0.1 + 0.9 * 0.5);  // half-way through the cosine
  EXPECT_DOUBLE_EQ(s.at(10), 0.1);
  EXPECT_DOUBLE_EQ(s.at(50), 0.1);

  auto a = torch::zeros({1}, torch::requires_grad()), b = torch::zeros({1}, torch::requires_grad());
  torch::optim::SGD opt({torch::optim::OptimizerParamGroup({a}), torch::optim::OptimizerParamGroup({b})},
                        torch::optim::SGDOptions(1.0));
  s.apply(opt, 1, {1.0, 0.1});
  EXPECT_DOUBLE_EQ(opt.param_groups()[0].options().get_lr(), 0.75);
  EXPECT_DOUBLE_EQ(opt.param_groups()[1].options().get_lr(), 0.075);
  EXPECT_THROW(s.apply(opt, 1, {1.0}), kd::Error);
  EXPECT_THROW(kd::WarmupCosine(kd::WarmupCosineOptions(1.0, 10).warmup_steps(10)), kd::Error);
  EXPECT_THROW(kd::WarmupCosine(kd::WarmupCosineOptions(1.0, 10).min_lr(2.0)), kd::Error);
}

}  // namespace
