// A loss the user registers in one line is named in a kd-train JSON config: parsed into a stage,
// built with the global registry, and its value and logged parts are what its formula gives.
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "config.h"
#include "kd/core/error.h"
#include "kd/losses/registry.h"
#include "kd/losses/temperature_kl.h"
#include "kd/train/stage_spec.h"
#include "reference.h"
#include "stage_config.h"

namespace {
using ::testing::HasSubstr;

// scale·CE(logits, targets): a user's loss.
struct ScaledCEImpl : torch::nn::Cloneable<ScaledCEImpl> {
  explicit ScaledCEImpl(double scale = 1.0) : scale(scale) {}
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    kd::LossResult r;
    r.total = scale * torch::nn::functional::cross_entropy(b.student.logits, b.targets);
    r.parts["scale"] = torch::scalar_tensor(scale, torch::kFloat64);
    return r;
  }
  double scale;
};
TORCH_MODULE(ScaledCE);

}  // namespace

// The one line a user writes.
KD_REGISTER_LOSS("test_scaled_ce", [](const kd::LossSpec& s) { return ScaledCE(s.number("scale", 1.0)); }, {"scale"});

namespace {

TEST(StageConfig, UserRegisteredLossIsBuiltFromAJsonStage) {
  const auto dir = kd::testing::temp_dir("stage_config");
  const std::string path = dir + "/custom.json";
  std::ofstream(path) << R"({"stages": [{"name": "custom", "steps": 2, "losses": [
      {"type": "test_scaled_ce", "name": "mine", "weight": 0.5, "scale": 3},
      {"type": "temperature_kl", "name": "kl", "temperature": 2}]}]})";
  const auto config = kd::app::resolve_config({path}, {});
  const auto specs = kd::app::stages_from_json(config["stages"], path);
  ASSERT_EQ(specs.size(), 1u);
  ASSERT_EQ(specs[0].losses().size(), 2u);
  EXPECT_EQ(specs[0].losses()[0].type(), "test_scaled_ce");
  EXPECT_EQ(specs[0].losses()[0].number("scale"), 3.0);
  auto stages = kd::build_stages(specs);
  ASSERT_EQ(stages.size(), 1u);
  EXPECT_EQ(stages[0].steps(), 2);

  torch::manual_seed(3);
  kd::DistillBatch batch;
  batch.student.logits = torch::randn({6, 4}, torch::kFloat64);
  batch.teacher.logits = torch::randn({6, 4}, torch::kFloat64);
  batch.targets = torch::tensor({0, 3, 1, 2, 2, 0}, torch::kLong);
  const auto r = stages[0].loss().forward<kd::LossResult>(batch);
  // 0.5·3·CE + 1·KL_T=2, CE written out: mean_i −log softmax(z_i)[y_i].
  const auto log_p = torch::log_softmax(batch.student.logits, -1);
  const double ce = -log_p.gather(1, batch.targets.unsqueeze(1)).mean().item<double>();
  const double kl = kd::functional::temperature_kl(batch.student.logits, batch.teacher.logits,
                                                   kd::TemperatureKLOptions().temperature(2.0))
                        .item<double>();
  EXPECT_NEAR(r.total.item<double>(), 0.5 * 3.0 * ce + kl, 1e-12);
  EXPECT_NEAR(r.parts.at("mine").item<double>(), 3.0 * ce, 1e-12);
  EXPECT_EQ(r.parts.at("mine.scale").item<double>(), 3.0);
  EXPECT_EQ(r.parts.at("w.mine").item<double>(), 0.5);
  EXPECT_EQ(r.parts.at("w.kl").item<double>(), 1.0);

  // The saved config names it again, and a misspelt option of the user's loss names the JSON path
  // and the key it accepts.
  EXPECT_EQ(kd::app::stages_to_json(specs)[0]["losses"][0]["type"], "test_scaled_ce");
  try {
    kd::app::resolve_config({path}, {"stages.0.losses.0.scal=3"});
    FAIL() << "a misspelt key must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
    EXPECT_THAT(e.what(), HasSubstr("'stages[0].losses[0]'"));
    EXPECT_THAT(e.what(), HasSubstr("scale"));
  }
}

}  // namespace
