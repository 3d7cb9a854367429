// kd-train's "lora" / "qat" config sections and a stage's own "qat" object -> kd::lora / kd::qat
// Options, through the whole config path (defaults < files < --set) and its errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config.h"
#include "hook_config.h"
#include "kd/core/error.h"

namespace {
using kd::app::resolve_config;
using ::testing::HasSubstr;

// configs/qat.json's shape, tiny: a float stage, a calibration stage and a QAT stage.
std::vector<std::string> two_qat_stages() {
  const std::string kl = R"({"type": "temperature_kl", "name": "kl", "weight": 1.0})";
  return {"stages=[{\"name\": \"float\", \"steps\": 2, \"losses\": [" + kl + "]},"
          " {\"name\": \"calibrate\", \"steps\": 2, \"hooks\": [\"qat\"], \"losses\": [" + kl + "],"
          "  \"qat\": {\"fake_quant\": false, \"observers\": true, \"freeze_observers_at\": 1.0}},"
          " {\"name\": \"qat\", \"steps\": 4, \"hooks\": [\"qat\"], \"losses\": [" + kl + "],"
          "  \"qat\": {\"freeze_observers_at_step\": 3}}]"};
}

std::string error_of(const std::vector<std::string>& sets) {
  try {
    resolve_config({}, sets);
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
    return e.what();
  }
  return "no error";
}

TEST(HookConfig, StageQatObjectsBecomePerStageHookOptions) {
  auto sets = two_qat_stages();
  sets.push_back("qat.freeze_observers_at=0.25");
  const auto config = resolve_config({}, sets);
  const auto o = kd::app::qat_hook_options_from_json(config["qat"], config["stages"]);
  EXPECT_DOUBLE_EQ(o.freeze_observers_at(), 0.25);
  ASSERT_EQ(o.stages().size(), 2u);
  const auto calibrate = o.stage_options("calibrate");
  EXPECT_FALSE(calibrate.fake_quant());
  EXPECT_TRUE(calibrate.observers());
  EXPECT_EQ(calibrate.freeze_observers_at(), std::optional<double>(1.0));
  EXPECT_FALSE(calibrate.freeze_observers_at_step().has_value());
  const auto qat = o.stage_options("qat");
  EXPECT_TRUE(qat.fake_quant());
  EXPECT_EQ(qat.freeze_observers_at_step(), std::optional<int64_t>(3));
  EXPECT_FALSE(qat.freeze_observers_at().has_value());  // falls back to qat.freeze_observers_at
  EXPECT_TRUE(o.stage_options("float").fake_quant());   // not named: the defaults
  // --set reaches into a stage's qat object too.
  sets.push_back("stages.2.qat.freeze_observers_at_step=1");
  const auto edited = resolve_config({}, sets);
  EXPECT_EQ(kd::app::qat_hook_options_from_json(edited["qat"], edited["stages"]).stage_options("qat").freeze_observers_at_step(),
            std::optional<int64_t>(1));
}

TEST(HookConfig, StageQatErrorsNameTheJsonPath) {
  auto with = [](const std::string& set) {
    auto sets = two_qat_stages();
    sets.push_back(set);
    return error_of(sets);
  };
  EXPECT_THAT(with("stages.2.qat.freeze_observer_at_step=3"),
              HasSubstr("'stages[2].qat.freeze_observer_at_step' is not a key of a stage's QAT settings; did you mean "
                        "'freeze_observers_at_step'?"));
  EXPECT_THAT(with("stages.1.qat.freeze_observers_at=1.5"),
              HasSubstr("'stages[1].qat.freeze_observers_at' must be a fraction of the stage in [0, 1], got 1.5"));
  EXPECT_THAT(with("stages.2.qat.freeze_observers_at_step=-2"),
              HasSubstr("'stages[2].qat.freeze_observers_at_step' must be an optimizer step of the stage"));
  EXPECT_THAT(with("stages.1.qat.fake_quant=1"), HasSubstr("'stages[1].qat.fake_quant' must be true or false, got 1"));
  EXPECT_THAT(with("stages.0.qat={\"observers\": false}"),
              HasSubstr("'stages[0].qat' sets QAT options but the stage does not list \"qat\" in its \"hooks\""));
}

TEST(HookConfig, LoraDropoutIsAConfigKeyWithARange) {
  const auto config = resolve_config({}, {"lora.dropout=0.1", "lora.targets=[\"fc\"]"});
  EXPECT_DOUBLE_EQ(kd::app::lora_options_from_json(config["lora"], "config").dropout(), 0.1);
  EXPECT_DOUBLE_EQ(kd::app::lora_options_from_json(resolve_config({}, {})["lora"], "config").dropout(), 0.0);
  EXPECT_THAT(error_of({"lora.dropout=1.5"}), HasSubstr("'lora.dropout' = 1.5 is out of range"));
}

}  // namespace
