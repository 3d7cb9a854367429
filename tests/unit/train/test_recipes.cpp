// progressive3: the three stages' terms and weights, and the recipe end to end on Fashion-MNIST.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/kd.h"

namespace {

std::vector<std::string> term_names(const kd::StageSpec& s) {
  std::vector<std::string> out;
  for (const auto& l : s.losses()) out.push_back(l.term_name() + "@" + std::to_string(l.weight()(0.0)));
  return out;
}

TEST(Progressive3, FeaturesThenAttentionThenLogitsWithTheSourceWeights) {
  const auto specs = kd::progressive3();
  ASSERT_EQ(specs.size(), 3u);
  EXPECT_EQ(specs[0].name(), "features");
  EXPECT_EQ(specs[1].name(), "attention");
  EXPECT_EQ(specs[2].name(), "logits");
  EXPECT_EQ(term_names(specs[0]), (std::vector<std::string>{"feat@1.000000"}));
  EXPECT_EQ(term_names(specs[1]), (std::vector<std::string>{"feat@1.000000", "attn@0.500000"}));
  EXPECT_EQ(term_names(specs[2]),
            (std::vector<std::string>{"feat@1.000000", "attn@0.500000", "kl@0.800000", "ce@0.200000"}));
  EXPECT_DOUBLE_EQ(specs[2].losses()[2].number("temperature"), 3.0);
  EXPECT_EQ(specs[2].epochs(), 2);
  EXPECT_EQ(kd::progressive3(kd::Progressive3Options().ce_weight(0)).back().losses().size(), 3u);
  EXPECT_THROW(kd::progressive3(kd::Progressive3Options().epochs({1, 2})), kd::Error);
  EXPECT_THROW(kd::progressive3(kd::Progressive3Options().kl_weight(-1)), kd::Error);
}

struct Recorder : kd::Callback {
  void on_stage_begin(const kd::Stage& s, const kd::StepInfo& i) override {
    begins.emplace_back(s.name(), i.global_step);
  }
  void on_step_end(const kd::StepReport& r) override {
    std::vector<std::string> names;
    for (const auto& [k, _] : r.loss.parts) names.push_back(k);
    parts.push_back(names);
    totals.push_back(r.loss.total.item<double>());
  }
  std::vector<std::pair<std::string, int64_t>> begins;
  std::vector<std::vector<std::string>> parts;
  std::vector<double> totals;
};

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

TEST(Progressive3, RunsEndToEndOnFashionMnistSwitchingLossesAtTheStageBoundaries) {
  torch::manual_seed(0);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, kd::data::FashionMnistOptions().limit(1024));
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, kd::data::FashionMnistOptions().limit(256));
  auto tmodel = kd::models::CnnTeacher(kd::models::CnnTeacherOptions().width1(8).width2(16).hidden(32));
  kd::StagedTrainer(kd::Student(tmodel.ptr()), std::nullopt,
                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(1)},
                    kd::StagedTrainerOptions().batch_size(64))
      .fit(train);
  auto smodel = kd::models::DepthwiseCnnStudent(kd::models::DepthwiseCnnStudentOptions().width1(4).width2(8));
  auto specs = kd::progressive3(kd::Progressive3Options().student_dims({4, 8}).teacher_dims({8, 16}));
  specs[0].steps(6);
  specs[1].steps(4);
  specs[2].steps(8);
  auto recorder = std::make_shared<Recorder>();
  kd::StagedTrainer trainer(kd::Student(smodel.ptr()), kd::Teacher(tmodel.ptr()), kd::build_stages(specs),
                            kd::StagedTrainerOptions().batch_size(32).num_classes(10));
  trainer.add_callback(recorder);
  const auto summary = trainer.fit(train, &val);
  EXPECT_EQ(summary.steps, 18);
  EXPECT_EQ(recorder->begins, (std::vector<std::pair<std::string, int64_t>>{
                                  {"features", 0}, {"attention", 6}, {"logits", 10}}));
  ASSERT_EQ(recorder->parts.size(), 18u);
  EXPECT_TRUE(has(recorder->parts[5], "feat") && !has(recorder->parts[5], "attn"));
  EXPECT_TRUE(has(recorder->parts[6], "attn") && !has(recorder->parts[6], "kl"));
  EXPECT_TRUE(has(recorder->parts[10], "kl") && has(recorder->parts[10], "ce") && has(recorder->parts[10], "w.kl"));
  EXPECT_LT(recorder->totals[5], recorder->totals[0]);  // feature alignment improves within stage 1
  for (double t : recorder->totals) EXPECT_TRUE(std::isfinite(t));
}

}  // namespace
