// QAT inside kd::StagedTrainer: float until its stage, fake-quantized from then on, observers frozen
// for the last part, untouched by evaluation, exact resume inside the stage, and an int8 export that
// predicts what the trained fake-quant model predicts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::synthetic;
using ::testing::HasSubstr;

// Linear layers with an activation point in front of each, as the reference CNNs declare them.
struct MlpImpl : kd::Model {
  MlpImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
    act1 = register_module("act1", kd::qat::FakeQuantize());
    act2 = register_module("act2", kd::qat::FakeQuantize());
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.hidden_states.push_back(torch::tanh(fc1->forward(act1->forward(x))));
    out.logits = fc2->forward(act2->forward(out.hidden_states.back()));
    return out;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  kd::qat::FakeQuantize act1{nullptr}, act2{nullptr};
};

// Records fc1's weight quantizer scale and act1's range after every step, and the switches.
struct Probe : kd::Callback {
  explicit Probe(kd::qat::QAT q) : qat(std::move(q)) {}
  void on_step_end(const kd::StepReport& r) override {
    scales.push_back(qat->weight_sites()[0].quantizer->scale.clone());
    act_max.push_back(qat->activation_sites()[0].quantizer->max_val.clone());
    observing.push_back(qat->observers_enabled());
    fake_quant.push_back(qat->weight_sites()[0].quantizer->fake_quant_enabled() &&
                         qat->activation_sites()[0].quantizer->fake_quant_enabled());
  }
  kd::qat::QAT qat;
  std::vector<torch::Tensor> scales, act_max;
  std::vector<bool> observing, fake_quant;
};

TEST(QATHook, FloatBeforeItsStageQuantizedInItObserversFrozenForTheLastPart) {
  auto data = synthetic(128, 1);
  auto validation = synthetic(64, 9);
  {
    torch::NoGradGuard ng;
    validation.inputs.mul_(50);  // far outside the training range: an observing evaluation would widen act1's range
  }
  torch::manual_seed(0);
  auto net = std::make_shared<MlpImpl>();
  auto qat = kd::qat::prepare(net);
  auto hook = std::make_shared<kd::qat::Hook>(qat, kd::qat::HookOptions().freeze_observers_at(0.5));
  const auto x = data.inputs.slice(0, 0, 16);
  {
    // Construction restored the float model: identity activation points, W₀ as the weight.
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::allclose(net->forward(x).logits,
                                net->fc2->forward(torch::tanh(torch::linear(x, net->named_parameters()["fc1.weight"],
                                                                            net->fc1->bias)))));
  }
  auto probe = std::make_shared<Probe>(qat);
  kd::StagedTrainer trainer(kd::Student(net), std::nullopt,
                            {kd::Stage("float", torch::nn::AnyModule(kd::HardLabelCE())).steps(2).lr(0.05),
                             kd::Stage("qat", torch::nn::AnyModule(kd::HardLabelCE())).steps(8).lr(0.05).eval_every(2).hooks({hook})},
                            kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  trainer.add_callback(probe);
  trainer.fit(data, &validation);

  // Observers on for steps 0..3 of the QAT stage (progress < 0.5), off for 4..7: the scale stops moving.
  ASSERT_EQ(probe->observing.size(), 10u);
  EXPECT_FALSE(probe->observing[1]);  // float stage
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(probe->observing[i]) << i;
  for (int i = 6; i < 10; ++i) EXPECT_FALSE(probe->observing[i]) << i;
  for (int i = 7; i < 10; ++i) EXPECT_TRUE(torch::equal(probe->scales[i], probe->scales[6])) << i;
  EXPECT_FALSE(torch::equal(probe->scales[2], probe->scales[5]));  // W₀ moved and the moving average followed

  // Evaluations (every 2 steps, on inputs 50× larger) never moved act1's range.
  const float act1_range = net->act1->max_val.item<float>();
  EXPECT_LT(act1_range, 4.f);  // training inputs are N(0, 1); one observed evaluation batch would add ~1.5

  // After the run the student is the fake-quantized model: its fc1 weight is fq(W₀) on the per-channel grid.
  auto w0 = net->named_parameters()["fc1.weight"];
  auto s = qat->weight_sites()[0].quantizer->scale.view({-1, 1});
  const auto grid = torch::clamp(torch::round(w0 / s), -127, 127) * s;
  EXPECT_LT((net->fc1->weight - grid).abs().max().item<float>(), 1e-6f);

  // The int8 file predicts what the trained fake-quant model predicts.
  const auto path = kd::testing::temp_dir("qat_hook") + "/student.int8.pt";
  kd::qat::export_int8(*net, *qat, path);
  auto fresh = std::make_shared<MlpImpl>();
  kd::qat::load_int8(*fresh, path);
  torch::NoGradGuard ng;
  net->eval();
  fresh->eval();
  const auto a = net->forward(data.inputs).logits, b = fresh->forward(data.inputs).logits;
  EXPECT_TRUE(torch::equal(a.argmax(1), b.argmax(1)));
  EXPECT_LT((a - b).abs().max().item<float>(), 1e-5f);
}

TEST(QATHook, InterruptedAndResumedInsideTheQATStageIsBitIdentical) {
  auto data = synthetic(80, 4);
  auto make = [](std::shared_ptr<MlpImpl> net) {
    auto hook = std::make_shared<kd::qat::Hook>(kd::qat::prepare(net), kd::qat::HookOptions().freeze_observers_at(0.5));
    return std::make_pair(
        std::vector<kd::Stage>{kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.03),
                               kd::Stage("q", torch::nn::AnyModule(kd::HardLabelCE())).steps(8).lr(0.03).hooks({hook})},
        hook);
  };
  auto options = [](const std::string& dir) {
    return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("cfg");
  };
  torch::manual_seed(7);
  auto straight = std::make_shared<MlpImpl>();
  auto [straight_stages, straight_hook] = make(straight);
  kd::StagedTrainer(kd::Student(straight), std::nullopt, straight_stages, options(kd::testing::temp_dir("straight")))
      .fit(data);
  for (int64_t crash_after : {3, 5, 9}) {  // at the boundary, while observing, after the freeze
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("resume");
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer crashing(kd::Student(net), std::nullopt, make(net).first, options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);

    torch::manual_seed(12345);
    auto resumed = std::make_shared<MlpImpl>();
    auto [resumed_stages, resumed_hook] = make(resumed);
    EXPECT_TRUE(kd::StagedTrainer(kd::Student(resumed), std::nullopt, resumed_stages, options(dir))
                    .fit(data, nullptr, /*resume=*/true)
                    .resumed);
    auto a = straight->named_parameters(), b = resumed->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
    auto ab = straight->named_buffers(), bb = resumed->named_buffers();
    for (const auto& p : ab) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
    auto qa = straight_hook->qat()->named_buffers(), qb = resumed_hook->qat()->named_buffers();
    for (const auto& p : qa) EXPECT_TRUE(torch::equal(p.value(), qb[p.key()])) << p.key();
  }
}

// calibrate: 4 steps, fake quantization off, observers on throughout; qat: 6 steps, fake-quantized,
// observers frozen from step 2 of the stage; tail: 2 steps with the defaults (freeze at half).
std::pair<std::vector<kd::Stage>, std::shared_ptr<kd::qat::Hook>> two_qat_stages(std::shared_ptr<MlpImpl> net) {
  auto hook = std::make_shared<kd::qat::Hook>(
      kd::qat::prepare(net),
      kd::qat::HookOptions()
          .freeze_observers_at(0.5)
          .stage("calibrate", kd::qat::StageOptions().fake_quant(false).observers(true).freeze_observers_at(1.0))
          .stage("qat", kd::qat::StageOptions().freeze_observers_at_step(2)));
  return {{kd::Stage("calibrate", torch::nn::AnyModule(kd::HardLabelCE())).steps(4).lr(0.05).hooks({hook}),
           kd::Stage("qat", torch::nn::AnyModule(kd::HardLabelCE())).steps(6).lr(0.05).hooks({hook}),
           kd::Stage("tail", torch::nn::AnyModule(kd::HardLabelCE())).steps(2).lr(0.05).hooks({hook})},
          hook};
}

TEST(QATHook, PerStageSettingsCalibrateInFloatThenTrainFrozenFromAStep) {
  auto data = synthetic(128, 6);
  torch::manual_seed(1);
  auto net = std::make_shared<MlpImpl>();
  auto [stages, hook] = two_qat_stages(net);
  auto qat = hook->qat();
  auto probe = std::make_shared<Probe>(qat);
  kd::StagedTrainer trainer(kd::Student(net), std::nullopt, stages, kd::StagedTrainerOptions().batch_size(16));
  // After the first calibration step the model is the float model: W₀ as the weight, identity activation points.
  struct FloatCheck : kd::Callback {
    FloatCheck(std::shared_ptr<MlpImpl> n, kd::qat::QAT q, torch::Tensor x) : net(std::move(n)), qat(std::move(q)), x(std::move(x)) {}
    void on_step_end(const kd::StepReport& r) override {
      if (r.step.global_step != 0) return;
      torch::NoGradGuard ng;
      qat->enable_observers(false);  // this check must not move a range
      auto p = net->named_parameters();
      const auto expected = torch::linear(torch::tanh(torch::linear(x, p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"]);
      is_float = net->fc1->weight.is_same(p["fc1.weight"]) && torch::equal(net->forward(x).logits, expected);
      qat->enable_observers(true);
    }
    std::shared_ptr<MlpImpl> net;
    kd::qat::QAT qat;
    torch::Tensor x;
    bool is_float = false;
  };
  auto float_check = std::make_shared<FloatCheck>(net, qat, data.inputs.slice(0, 0, 16) * 3);
  trainer.add_callback(float_check);
  trainer.add_callback(probe);
  trainer.fit(data);

  ASSERT_EQ(probe->observing.size(), 12u);
  EXPECT_TRUE(float_check->is_float);
  // calibrate (steps 0..3): float forward, observers running all stage long, ranges moving.
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(probe->fake_quant[i]) << i;
    EXPECT_TRUE(probe->observing[i]) << i;
  }
  EXPECT_FALSE(torch::equal(probe->scales[0], probe->scales[3]));
  // qat (steps 4..9): fake-quantized; observing at its steps 0 and 1, frozen from its step 2 on.
  for (int i = 4; i < 10; ++i) EXPECT_TRUE(probe->fake_quant[i]) << i;
  EXPECT_TRUE(probe->observing[4]);
  EXPECT_TRUE(probe->observing[5]);
  for (int i = 6; i < 10; ++i) {
    EXPECT_FALSE(probe->observing[i]) << i;
    EXPECT_TRUE(torch::equal(probe->scales[i], probe->scales[5])) << i;
    EXPECT_TRUE(torch::equal(probe->act_max[i], probe->act_max[5])) << i;
  }
  EXPECT_FALSE(torch::equal(probe->scales[3], probe->scales[5]));  // observed during qat's first two steps
  // tail: the hook's defaults, observing for the first half (1 of 2 steps).
  EXPECT_TRUE(probe->fake_quant[10] && probe->fake_quant[11]);
  EXPECT_TRUE(probe->observing[10]);
  EXPECT_FALSE(probe->observing[11]);
}

TEST(QATHook, PerStageSettingsResumeBitIdentically) {
  auto data = synthetic(80, 7);
  auto options = [](const std::string& dir) {
    return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("cfg");
  };
  torch::manual_seed(7);
  auto straight = std::make_shared<MlpImpl>();
  auto [straight_stages, straight_hook] = two_qat_stages(straight);
  kd::StagedTrainer(kd::Student(straight), std::nullopt, straight_stages, options(kd::testing::temp_dir("straight")))
      .fit(data);
  for (int64_t crash_after : {2, 5, 8}) {  // inside calibrate, before qat's freeze, after it
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("resume");
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer crashing(kd::Student(net), std::nullopt, two_qat_stages(net).first, options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);

    torch::manual_seed(12345);
    auto resumed = std::make_shared<MlpImpl>();
    auto [resumed_stages, resumed_hook] = two_qat_stages(resumed);
    EXPECT_TRUE(kd::StagedTrainer(kd::Student(resumed), std::nullopt, resumed_stages, options(dir))
                    .fit(data, nullptr, /*resume=*/true)
                    .resumed);
    auto a = straight->named_parameters(), b = resumed->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
    auto qa = straight_hook->qat()->named_buffers(), qb = resumed_hook->qat()->named_buffers();
    for (const auto& p : qa) EXPECT_TRUE(torch::equal(p.value(), qb[p.key()])) << p.key();
    auto aa = straight->named_buffers(), ab = resumed->named_buffers();
    for (const auto& p : aa) EXPECT_TRUE(torch::equal(p.value(), ab[p.key()])) << p.key();
  }
}

TEST(QATHook, BadPerStageSettingsNameTheStage) {
  auto net = std::make_shared<MlpImpl>();
  auto message = [&](const kd::qat::HookOptions& o) {
    try {
      kd::qat::Hook hook(kd::qat::prepare(net), o);
    } catch (const kd::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(message(kd::qat::HookOptions().stage("q", kd::qat::StageOptions().freeze_observers_at(1.5))),
              HasSubstr("stage 'q': freeze_observers_at must be in [0, 1]"));
  EXPECT_THAT(message(kd::qat::HookOptions().stage("q", kd::qat::StageOptions().freeze_observers_at_step(-1))),
              HasSubstr("stage 'q': freeze_observers_at_step must be >= 0"));
  EXPECT_EQ(kd::qat::HookOptions().stage("q", kd::qat::StageOptions().observers(false)).stage_options("q").observers(),
            false);
  EXPECT_TRUE(kd::qat::HookOptions().stage_options("unnamed").fake_quant());
}

TEST(QATHook, OnceOnQATMustStayOnAndDoesNotShareAStageWithLoRA) {
  auto net = std::make_shared<MlpImpl>();
  auto qat = std::make_shared<kd::qat::Hook>(kd::qat::prepare(net));
  auto lora = std::make_shared<kd::lora::Hook>(kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc1"})));
  auto stage = [](const std::string& name, std::vector<std::shared_ptr<kd::StageHook>> hooks) {
    return kd::Stage(name, torch::nn::AnyModule(kd::HardLabelCE())).steps(1).hooks(std::move(hooks));
  };
  auto error = [&](std::vector<kd::Stage> stages) {
    try {
      kd::StagedTrainer(kd::Student(net), std::nullopt, std::move(stages));
    } catch (const kd::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error({stage("q", {qat}), stage("after", {})}),
              HasSubstr("stage 'after' does not enable 'qat', but an earlier stage did"));
  EXPECT_THAT(error({stage("both", {lora, qat})}), HasSubstr("stage 'both' enables both 'lora' and 'qat'"));
  EXPECT_EQ(error({stage("lora", {lora}), stage("q", {qat}), stage("q2", {qat})}), "no error");
  EXPECT_THROW(kd::qat::Hook(kd::qat::prepare(net), kd::qat::HookOptions().freeze_observers_at(1.5)), kd::Error);
}

}  // namespace
