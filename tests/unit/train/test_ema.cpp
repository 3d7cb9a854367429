#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/ema.h"

namespace {

TEST(Ema, MatchesTheHandComputedRecurrence) {
  torch::nn::Linear model(2, 1);
  torch::NoGradGuard no_grad;
  model->weight.copy_(torch::tensor({{1.0, 2.0}}));
  kd::Ema ema(*model, 0.9);
  // Parameters take the values 3, 5, 7 (in the first weight) over three steps.
  // shadow: 1 → 0.9·1+0.1·3 = 1.2 → 0.9·1.2+0.1·5 = 1.58 → 0.9·1.58+0.1·7 = 2.122
  for (double v : {3.0, 5.0, 7.0}) {
    model->weight[0][0].fill_(v);
    ema.update(*model);
  }
  EXPECT_NEAR(ema.shadow()[0][0][0].item<double>(), 2.122, 1e-6);
  EXPECT_NEAR(ema.shadow()[0][0][1].item<double>(), 2.0, 1e-6);  // constant stays constant
  EXPECT_EQ(ema.updates(), 3);

  torch::nn::Linear other(2, 1);
  ema.copy_to(*other);
  EXPECT_NEAR(other->weight[0][0].item<double>(), 2.122, 1e-6);
}

TEST(Ema, WarmupDecayAndBuffersAreCopied) {
  torch::nn::BatchNorm1d bn(3);
  kd::Ema ema(*bn, 0.999, /*warmup=*/true);
  EXPECT_DOUBLE_EQ(ema.next_decay(), 2.0 / 11.0);
  torch::NoGradGuard no_grad;
  bn->running_mean.fill_(4.0);
  bn->weight.fill_(0.0);  // from 1: shadow = (2/11)·1 + (9/11)·0
  ema.update(*bn);
  torch::nn::BatchNorm1d copy(3);
  ema.copy_to(*copy);
  EXPECT_NEAR(copy->weight[0].item<double>(), 2.0 / 11.0, 1e-6);
  EXPECT_DOUBLE_EQ(copy->running_mean[1].item<double>(), 4.0);
  EXPECT_THROW(ema.update(*torch::nn::Linear(2, 2)), kd::Error);
  EXPECT_THROW(kd::Ema(*bn, 1.0), kd::Error);
}

}  // namespace
