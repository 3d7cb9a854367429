// Stages built from specs: weighted sums of registered losses, modules shared across stages.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/kd.h"

namespace {
using ::testing::HasSubstr;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kd::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected kd::Error";
  return "";
}

kd::DistillBatch logits_batch() {
  torch::manual_seed(0);
  kd::DistillBatch b;
  b.student.logits = torch::randn({4, 5}, torch::kFloat64);
  b.teacher.logits = torch::randn({4, 5}, torch::kFloat64);
  b.targets = torch::tensor({0, 1, 2, 3});
  return b;
}

TEST(BuildStages, StageLossIsTheWeightedSumOfItsTerms) {
  const auto b = logits_batch();
  auto stages = kd::build_stages({kd::StageSpec("s").epochs(3).lr(0.01).trainable({"^fc"}).losses(
      {kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 2.0),
       kd::LossSpec("hard_label_ce").name("ce").weight(0.2)})});
  ASSERT_EQ(stages.size(), 1u);
  EXPECT_EQ(stages[0].name(), "s");
  EXPECT_EQ(stages[0].epochs(), 3);
  EXPECT_DOUBLE_EQ(stages[0].lr(), 0.01);
  EXPECT_EQ(stages[0].trainable(), std::vector<std::string>{"^fc"});
  const auto r = stages[0].loss().forward<kd::LossResult>(b);
  // Closed form from the parts the terms report: 0.8·KL + 0.2·CE.
  const double kl = kd::functional::temperature_kl(b.student.logits, b.teacher.logits,
                                                   kd::TemperatureKLOptions().temperature(2.0))
                        .item<double>();
  const double ce = torch::nn::functional::cross_entropy(b.student.logits, b.targets).item<double>();
  EXPECT_NEAR(r.total.item<double>(), 0.8 * kl + 0.2 * ce, 1e-12);
  EXPECT_NEAR(r.parts.at("w.kl").item<double>(), 0.8, 1e-15);
}

TEST(BuildStages, IdenticalTermsShareOneModuleAcrossStagesAndDifferentOnesDoNot) {
  const auto feat = kd::LossSpec("feature_l2")
                        .name("feat")
                        .set("teacher_layers", std::vector<double>{0})
                        .set("student_layers", std::vector<double>{0})
                        .set("student_dims", std::vector<double>{3})
                        .set("teacher_dims", std::vector<double>{5});
  auto stages = kd::build_stages({kd::StageSpec("a").losses({feat}),
                                  kd::StageSpec("b").losses({kd::LossSpec(feat).weight(0.5),
                                                             kd::LossSpec("temperature_kl").name("kl")}),
                                  kd::StageSpec("c").losses({kd::LossSpec(feat).set("init", "identity")})});
  auto sum = [&](size_t i) { return std::dynamic_pointer_cast<kd::WeightedSumImpl>(stages[i].loss().ptr()); };
  ASSERT_TRUE(sum(0) && sum(1) && sum(2));
  const auto pa = sum(0)->named_parameters(), pb = sum(1)->named_parameters(), pc = sum(2)->named_parameters();
  ASSERT_TRUE(pa.contains("feat.proj0.weight"));
  EXPECT_TRUE(pa["feat.proj0.weight"].is_same(pb["feat.proj0.weight"]));   // one projection, two stages
  EXPECT_FALSE(pa["feat.proj0.weight"].is_same(pc["feat.proj0.weight"]));  // other options: its own
}

TEST(BuildStages, ErrorsNameTheStage) {
  EXPECT_THAT(message_of([] { kd::build_stages({kd::StageSpec("")}); }), HasSubstr("stage 0 has no name"));
  EXPECT_THAT(message_of([] { kd::build_stages({kd::StageSpec("x")}); }), HasSubstr("stage 'x' has no loss terms"));
  EXPECT_THAT(message_of([] {
                kd::build_stages({kd::StageSpec("x").losses({kd::LossSpec("temperature_kl"), kd::LossSpec("temperature_kl")})});
              }),
              HasSubstr("stage 'x': two terms are named 'temperature_kl'"));
  const auto msg = message_of([] { kd::build_stages({kd::StageSpec("y").losses({kd::LossSpec("temprature_kl")})}); });
  EXPECT_THAT(msg, HasSubstr("stage 'y': "));
  EXPECT_THAT(msg, HasSubstr("temperature_kl"));
}

}  // namespace
