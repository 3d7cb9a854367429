// LoRA inside kd::StagedTrainer: what trains in a LoRA stage, merging at its end, exact resume
// inside it, and the stage/hook combinations the trainer refuses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::synthetic;
using kd::testing::MlpImpl;
using ::testing::HasSubstr;

std::map<std::string, torch::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

TEST(LoRAHook, StageTrainsOnlyAdaptersThenMergesIntoAnOrdinaryModel) {
  auto data = synthetic(64, 1);
  torch::manual_seed(0);
  auto tnet = std::make_shared<MlpImpl>(32);
  auto snet = std::make_shared<MlpImpl>();
  kd::Teacher teacher(tnet);
  auto lora = kd::lora::apply(snet, kd::lora::Options().rank(2).alpha(4).targets({"fc1"}));
  auto hook = std::make_shared<kd::lora::Hook>(lora);

  // Stage 1 alone first (everything trains), to know the weights the LoRA stage starts from.
  kd::StagedTrainer(kd::Student(snet), teacher, {kd::Stage("warm", torch::nn::AnyModule(kd::TemperatureKL())).steps(2).lr(0.05)},
                    kd::StagedTrainerOptions().batch_size(16))
      .fit(data);
  auto before = snapshot(*snet);
  kd::StagedTrainer trainer(kd::Student(snet), teacher,
                            {kd::Stage("lora", torch::nn::AnyModule(kd::TemperatureKL())).steps(4).lr(0.05).hooks({hook})},
                            kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  trainer.fit(data, &data);

  // fc2 and the biases never trained; fc1's weight changed only by the merge, by exactly s·B·A.
  auto after = snapshot(*snet);
  EXPECT_TRUE(torch::equal(after["fc2.weight"], before["fc2.weight"]));
  EXPECT_TRUE(torch::equal(after["fc2.bias"], before["fc2.bias"]));
  EXPECT_TRUE(torch::equal(after["fc1.bias"], before["fc1.bias"]));
  ASSERT_TRUE(lora->merged());
  auto a = lora->named_parameters()["fc1.lora_A"], b = lora->named_parameters()["fc1.lora_B"];
  EXPECT_GT(b.abs().max().item<float>(), 0.f);  // the adapters did train
  const auto expected = before["fc1.weight"] + torch::mm(b, a) * lora->scale();
  EXPECT_LT((after["fc1.weight"] - expected).abs().max().item<float>(), 1e-6f);
  EXPECT_TRUE(snet->fc1->weight.is_same(snet->named_parameters()["fc1.weight"]));
}

TEST(LoRAHook, HeadNamedByTrainableKeepsTrainingAlongsideTheAdapters) {
  auto data = synthetic(64, 2);
  torch::manual_seed(0);
  auto snet = std::make_shared<MlpImpl>();
  auto lora = kd::lora::apply(snet, kd::lora::Options().rank(2).targets({"fc1"}));
  auto before = snapshot(*snet);
  kd::StagedTrainer(kd::Student(snet), std::nullopt,
                    {kd::Stage("lora", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.05).trainable({"fc"}).hooks(
                        {std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().merge_at_end(false))})},
                    kd::StagedTrainerOptions().batch_size(16))
      .fit(data);
  auto after = snapshot(*snet);
  EXPECT_FALSE(torch::equal(after["fc2.weight"], before["fc2.weight"]));  // named by trainable
  EXPECT_TRUE(torch::equal(after["fc1.weight"], before["fc1.weight"]));   // an adapted layer's W0 stays frozen
  EXPECT_TRUE(torch::equal(after["fc1.bias"], before["fc1.bias"]));
  EXPECT_FALSE(lora->merged());
}

TEST(LoRAHook, InterruptedAndResumedInsideTheLoRAStageIsBitIdentical) {
  auto data = synthetic(80, 4);
  torch::manual_seed(11);
  kd::Teacher teacher(std::make_shared<MlpImpl>(24));
  const auto adapter_dir = kd::testing::temp_dir("lora_adapter");
  auto stages = [&](std::shared_ptr<MlpImpl> net) {
    auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
    auto hook = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().save_adapter_to(adapter_dir + "/a.pt"));
    return std::make_pair(
        std::vector<kd::Stage>{kd::Stage("a", torch::nn::AnyModule(kd::HardLabelCE())).steps(3).lr(0.03),
                               kd::Stage("b", torch::nn::AnyModule(kd::TemperatureKL())).steps(6).lr(0.03).hooks({hook})},
        lora);
  };
  auto options = [](const std::string& dir) {
    return kd::StagedTrainerOptions().batch_size(16).checkpoint_dir(dir).checkpoint_every(1).fingerprint("cfg");
  };
  torch::manual_seed(7);
  auto straight_net = std::make_shared<MlpImpl>();
  auto [straight_stages, straight_lora] = stages(straight_net);
  kd::StagedTrainer(kd::Student(straight_net), teacher, straight_stages, options(kd::testing::temp_dir("straight"))).fit(data);
  ASSERT_TRUE(straight_lora->merged());

  for (int64_t crash_after : {3, 6}) {  // at the boundary into the LoRA stage, inside it
    SCOPED_TRACE(crash_after);
    const auto dir = kd::testing::temp_dir("resume");
    torch::manual_seed(7);
    auto net = std::make_shared<MlpImpl>();
    kd::StagedTrainer crashing(kd::Student(net), teacher, stages(net).first, options(dir));
    crashing.add_callback(std::make_shared<kd::testing::CrashAt>(crash_after));
    EXPECT_THROW(crashing.fit(data), std::runtime_error);

    torch::manual_seed(12345);  // a new process: other weights, other adapters, other RNG
    auto resumed_net = std::make_shared<MlpImpl>();
    auto [resumed_stages, resumed_lora] = stages(resumed_net);
    EXPECT_TRUE(kd::StagedTrainer(kd::Student(resumed_net), teacher, resumed_stages, options(dir))
                    .fit(data, nullptr, /*resume=*/true)
                    .resumed);
    EXPECT_TRUE(resumed_lora->merged());
    auto a = snapshot(*straight_net), b = snapshot(*resumed_net);
    for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b[name])) << name;
    auto la = snapshot(*straight_lora), lb = snapshot(*resumed_lora);
    for (const auto& [name, t] : la) EXPECT_TRUE(torch::equal(t, lb[name])) << name;
  }
  // The adapter file from the stage's end loads into a fresh LoRA.
  auto fresh = kd::lora::apply(std::make_shared<MlpImpl>(), kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
  fresh->load_adapter(adapter_dir + "/a.pt");
  EXPECT_TRUE(torch::equal(fresh->named_parameters()["fc2.lora_B"], straight_lora->named_parameters()["fc2.lora_B"]));
}

TEST(LoRAHook, TrainerRefusesHookCombinationsThatCannotWork) {
  auto net = std::make_shared<MlpImpl>();
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc1"}));
  auto merged = std::make_shared<kd::lora::Hook>(lora);
  auto unmerged = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().merge_at_end(false));
  auto stage = [](const std::string& name, std::vector<std::shared_ptr<kd::StageHook>> hooks) {
    return kd::Stage(name, torch::nn::AnyModule(kd::HardLabelCE())).steps(1).hooks(std::move(hooks));
  };
  auto error = [&](std::vector<kd::Stage> stages, kd::StagedTrainerOptions o = {}) {
    try {
      kd::StagedTrainer(kd::Student(net), std::nullopt, std::move(stages), o);
    } catch (const kd::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(error({stage("s", {merged, unmerged})}), HasSubstr("stage 's' enables both 'lora' and 'lora'"));
  EXPECT_THAT(error({stage("s3", {unmerged}), stage("s4", {})}),
              HasSubstr("stage 's4' does not enable 'lora', but an earlier stage did"));
  EXPECT_EQ(error({stage("s3", {merged}), stage("s4", {})}), "no error");  // merged: an ordinary model afterwards
  EXPECT_THAT(error({stage("s", {merged})}, kd::StagedTrainerOptions().ema_decay(0.9)), HasSubstr("set ema_decay 0"));
}

}  // namespace
