// What StagedTrainer measures and reports: classification metrics equal to a count made here, language-
// model metrics in closed form, the models' sizes before the first step, the run's end, the padding
// mask handed to the losses, and augmentation (refused with a teacher cache).
#include <cmath>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {
using kd::testing::MlpImpl;
using kd::testing::synthetic;

struct Events : kd::Callback {
  void on_fit_begin(const kd::FitInfo& i) override { info = i, begun = true; }
  void on_fit_end(const kd::TrainSummary& s) override { end_steps = s.steps; }
  void on_eval(const kd::EvalResult& e) override { evals.push_back(e); }
  kd::FitInfo info;
  bool begun = false;
  int64_t end_steps = -1;
  std::vector<kd::EvalResult> evals;
};

/// A "language model" whose logits over V = 4 symbols are a learnable bias (same at every position),
/// so its scores have closed forms.
struct BiasLmImpl : kd::Model {
  BiasLmImpl() { bias = register_parameter("bias", torch::zeros({4})); }
  kd::ModelOutput forward(const torch::Tensor& tokens) override {
    kd::ModelOutput out;
    out.logits = bias.view({1, 1, 4}).expand({tokens.size(0), tokens.size(1), 4}) + 0 * tokens.unsqueeze(-1);
    return out;
  }
  torch::Tensor bias;
};

/// Records the mask each batch carries.
struct MaskProbeImpl : torch::nn::Cloneable<MaskProbeImpl> {
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    if (!b.step.sanity_check) {  // the training batches only, not StagedTrainer::check's
      masks.push_back(b.mask);
      inputs.push_back(b.inputs);
    }
    return {b.student.logits.sum() * 0, {}};
  }
  std::vector<torch::Tensor> masks, inputs;
};
TORCH_MODULE(MaskProbe);

}  // namespace

TEST(StagedTrainerEval, ClassificationMetricsMatchACountMadeHereAndFitEventsCarryTheSizes) {
  const auto data = synthetic(64, 1);
  torch::manual_seed(0);
  auto tnet = std::make_shared<MlpImpl>(32);
  auto snet = std::make_shared<MlpImpl>();
  kd::StagedTrainer t(kd::Student(snet), kd::Teacher(tnet),
                      {kd::Stage("kl", torch::nn::AnyModule(kd::TemperatureKL())).steps(3).lr(0.05)},
                      kd::StagedTrainerOptions().batch_size(16).num_classes(4));
  auto ev = std::make_shared<Events>();
  t.add_callback(ev);
  t.fit(data, &data);
  ASSERT_TRUE(ev->begun);
  // MlpImpl(16): 8·16 + 16 + 16·4 + 4 = 212 parameters; MlpImpl(32): 8·32 + 32 + 32·4 + 4 = 420; float32.
  EXPECT_EQ(ev->info.student_parameters, 212);
  EXPECT_EQ(ev->info.student_bytes, 212 * 4);
  EXPECT_EQ(ev->info.teacher_parameters, 420);
  EXPECT_EQ(ev->info.teacher_bytes, 420 * 4);
  EXPECT_EQ(ev->info.train_examples, 64);
  EXPECT_EQ(ev->end_steps, 3);
  ASSERT_EQ(ev->evals.size(), 1u);
  torch::NoGradGuard g;
  const auto pred = snet->forward(data.inputs).logits.argmax(1);
  EXPECT_DOUBLE_EQ(ev->evals[0].metrics.at("accuracy"), (pred == data.targets).to(torch::kDouble).mean().item<double>());
}

TEST(StagedTrainerEval, LanguageModelMetricsHaveTheirClosedForms) {
  // Uniform logits over 4 symbols: −log p = ln 4 at every position, so nll = ln 4, perplexity = 4,
  // bits per byte = 2; ignored (−100) and masked positions are not counted.
  auto lm = std::make_shared<BiasLmImpl>();
  kd::data::TensorDataset ds{torch::zeros({2, 3}, torch::kLong), torch::tensor({{1, 2, -100}, {3, 0, 1}}),
                             torch::tensor({{1, 1, 1}, {1, 1, 0}})};
  auto m = kd::evaluate_language_model(*lm, ds);
  EXPECT_EQ(m.tokens, 4);
  EXPECT_NEAR(m.nll(), std::log(4.0), 1e-12);
  EXPECT_NEAR(m.perplexity(), 4.0, 1e-9);
  EXPECT_NEAR(m.bits_per_byte(), 2.0, 1e-12);
  // A bias of a on symbol 1: p(1) = e^a / (e^a + 3); targets 1, 2, 3, 0 (all counted).
  {
    torch::NoGradGuard g;
    lm->bias[1] = 2.0;
  }
  kd::data::TensorDataset ds2{torch::zeros({1, 4}, torch::kLong), torch::tensor({{1, 2, 3, 0}})};
  m = kd::evaluate_language_model(*lm, ds2);
  const double z = std::exp(2.0) + 3;
  const double nll = (-(2.0 - std::log(z)) + 3 * std::log(z)) / 4;
  EXPECT_NEAR(m.nll(), nll, 1e-6);
  EXPECT_NEAR(m.bits_per_byte(), nll / std::log(2.0), 1e-6);
  EXPECT_DOUBLE_EQ(m.token_accuracy(), 0.25);  // argmax is always 1
  kd::data::TensorDataset bad{torch::zeros({1, 4}, torch::kLong), torch::tensor({{1, 2, 3}})};
  EXPECT_THROW(kd::evaluate_language_model(*lm, bad), kd::Error);
}

TEST(StagedTrainerEval, ALanguageModelStageIsEvaluatedAsOne) {
  auto lm = std::make_shared<BiasLmImpl>();
  kd::data::TensorDataset ds{torch::zeros({8, 5}, torch::kLong), torch::randint(0, 4, {8, 5})};
  kd::StagedTrainer t(kd::Student(lm), std::nullopt,
                      {kd::Stage("ce", torch::nn::AnyModule(kd::HardLabelCE())).steps(2).lr(0.1)},
                      kd::StagedTrainerOptions().batch_size(4));
  auto ev = std::make_shared<Events>();
  t.add_callback(ev);
  t.fit(ds, &ds);
  ASSERT_EQ(ev->evals.size(), 1u);
  const auto direct = kd::evaluate_language_model(*lm, ds);
  EXPECT_DOUBLE_EQ(ev->evals[0].metrics.at("bits_per_byte"), direct.bits_per_byte());
  EXPECT_EQ(ev->evals[0].metrics.count("perplexity"), 1u);
}

TEST(StagedTrainerEval, TheDatasetsMaskReachesTheLossRowForRow) {
  auto x = torch::randn({6, 8});
  auto mask = torch::tensor({{1, 1, 0}, {1, 0, 0}, {1, 1, 1}, {1, 0, 0}, {1, 1, 0}, {1, 1, 1}});
  // Tag each example by a recognisable first input, so the batch's rows can be matched to the dataset's.
  for (int64_t i = 0; i < 6; ++i) x[i][0] = 100.0 + i;
  kd::data::TensorDataset ds{x, torch::randint(0, 4, {6}), mask};
  MaskProbe probe;
  kd::StagedTrainer t(kd::Student(std::make_shared<MlpImpl>()), std::nullopt,
                      {kd::Stage("p", torch::nn::AnyModule(probe)).steps(2)}, kd::StagedTrainerOptions().batch_size(3));
  t.fit(ds);
  ASSERT_EQ(probe->masks.size(), 2u);
  for (size_t b = 0; b < 2; ++b) {
    for (int64_t r = 0; r < 3; ++r) {
      const auto i = static_cast<int64_t>(probe->inputs[b][r][0].item<double>() - 100.0);
      EXPECT_TRUE(torch::equal(probe->masks[b][r], mask[i])) << "batch " << b << " row " << r;
    }
  }
}

TEST(StagedTrainerEval, AStochasticAugmentationIsAppliedToTrainingBatchesAndRefusedWithACache) {
  auto images = torch::rand({4, 1, 6, 6});
  kd::data::TensorDataset ds{images, torch::zeros({4}, torch::kLong)};
  MaskProbe probe;
  auto flip_all = std::make_shared<kd::data::RandomShiftFlip>(
      kd::data::RandomShiftFlipOptions().max_shift(0).flip_probability(1.0));
  struct Conv : kd::Model {
    Conv() { fc = register_module("fc", torch::nn::Linear(36, 4)); }
    kd::ModelOutput forward(const torch::Tensor& x) override {
      kd::ModelOutput o;
      o.logits = fc->forward(x.flatten(1));
      return o;
    }
    torch::nn::Linear fc{nullptr};
  };
  kd::StagedTrainer t(kd::Student(std::make_shared<Conv>()), std::nullopt,
                      {kd::Stage("p", torch::nn::AnyModule(probe)).steps(1)},
                      kd::StagedTrainerOptions().batch_size(4).augmentation(flip_all));
  t.fit(ds);
  ASSERT_EQ(probe->inputs.size(), 1u);
  // Every image the loss saw is a dataset image mirrored left-right (rows come in epoch order).
  for (int64_t r = 0; r < 4; ++r) {
    const auto seen = probe->inputs[0][r];
    bool mirrored = false, unchanged = false;
    for (int64_t i = 0; i < 4; ++i) {
      mirrored = mirrored || torch::equal(seen.flip({2}), images[i]);
      unchanged = unchanged || torch::equal(seen, images[i]);
    }
    EXPECT_TRUE(mirrored && !unchanged) << "row " << r;
  }

  const auto dir = kd::testing::temp_dir("aug_cache");
  auto tnet = std::make_shared<Conv>();
  kd::Teacher teacher(tnet);
  std::shared_ptr<kd::data::TeacherCache> cache = kd::data::TeacherCache::open_or_build(dir + "/c.kdcache", teacher, ds);
  try {
    kd::StagedTrainer(kd::Student(std::make_shared<Conv>()), std::nullopt,
                      {kd::Stage("p", torch::nn::AnyModule(kd::TemperatureKL())).steps(1)},
                      kd::StagedTrainerOptions().teacher_cache(cache).augmentation(flip_all));
    FAIL() << "a cache with a stochastic augmentation must be refused";
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("augmentation 'random_shift_flip' changes the inputs every epoch"),
              std::string::npos)
        << e.what();
  }
}
