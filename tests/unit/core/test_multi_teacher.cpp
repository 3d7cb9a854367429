#include <cmath>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/core/multi_teacher.h"

namespace {

// Returns fixed logits whatever the input (one row per example).
struct ConstantImpl : kd::Model {
  explicit ConstantImpl(std::vector<double> z) : z(torch::tensor(z, torch::kFloat64)) {
    w = register_parameter("w", torch::ones({1}, torch::kFloat64));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = (z * w).expand({x.size(0), z.size(0)});
    out.hidden_states.push_back(x * z.size(0));
    return out;
  }
  torch::Tensor z, w;
};

TEST(MultiTeacher, SoftmaxOfTheFusedLogitsIsTheWeightedMixture) {
  const double T = 2.0;
  auto a = std::make_shared<ConstantImpl>(std::vector<double>{2.0, 0.0, 0.0});
  auto b = std::make_shared<ConstantImpl>(std::vector<double>{0.0, 0.0, 4.0, });
  kd::Teacher fused(std::make_shared<kd::MultiTeacherImpl>(
      std::vector<kd::ModelPtr>{a, b}, kd::MultiTeacherOptions().weights({3.0, 1.0}).temperature(T).features_from(1)));
  auto out = fused->forward(torch::zeros({2, 1}, torch::kFloat64));
  // By hand: softmax([1,0,0]) and softmax([0,0,2]), mixed 0.75 / 0.25.
  const double ea = std::exp(1.0), eb = std::exp(2.0);
  const double pa[3] = {ea / (ea + 2), 1 / (ea + 2), 1 / (ea + 2)};
  const double pb[3] = {1 / (eb + 2), 1 / (eb + 2), eb / (eb + 2)};
  auto p = torch::softmax(out.logits / T, -1);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(p[1][c].item<double>(), 0.75 * pa[c] + 0.25 * pb[c], 1e-12);
  EXPECT_EQ(out.extras.count("teacher1.logits"), 1u);
  EXPECT_DOUBLE_EQ(out.hidden_states[0].sum().item<double>(), 0.0);
  for (const auto& prm : fused->parameters()) EXPECT_FALSE(prm.requires_grad());  // both frozen
}

TEST(MultiTeacher, BadWeightsAndShapesAreRejected) {
  auto a = std::make_shared<ConstantImpl>(std::vector<double>{1.0, 2.0});
  auto c = std::make_shared<ConstantImpl>(std::vector<double>{1.0, 2.0, 3.0});
  EXPECT_THROW(kd::MultiTeacherImpl({a, a}, kd::MultiTeacherOptions().weights({1.0})), kd::Error);
  EXPECT_THROW(kd::MultiTeacherImpl({a, a}, kd::MultiTeacherOptions().weights({0.0, 0.0})), kd::Error);
  EXPECT_THROW(kd::MultiTeacherImpl({}, {}), kd::Error);
  kd::MultiTeacherImpl mixed({a, c});
  EXPECT_THROW(mixed.forward(torch::zeros({1, 1}, torch::kFloat64)), kd::Error);
  kd::MultiTeacherImpl ok({a, a});
  ok.set_weights({1.0, 3.0});
  EXPECT_DOUBLE_EQ(ok.weights()[1], 0.75);
}

}  // namespace
