// Adversarial examples against the student: FGSM on images equals ε·sign(∇ₓCE) written out for a linear
// model, HotFlip on token ids picks the largest first-order gains (recomputed here pair by pair), and the
// trainer mixes them into its batches (and refuses them with a teacher cache).
#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"
#include "training_fixtures.h"

namespace {

// logits = W·flatten(x) + b, with a dropout that must be off while examples are made.
struct LinearImpl : kd::Model {
  LinearImpl() {
    fc = register_module("fc", torch::nn::Linear(6, 3));
    drop = register_module("drop", torch::nn::Dropout(0.9));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = fc->forward(drop->forward(x.flatten(1)));
    return out;
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::Dropout drop{nullptr};
};

// FGSM against LinearImpl written out: ∇ₓ CE = Wᵀ(softmax(Wx + b) − onehot(y)) / n, whose sign does not
// depend on n; `flat` [n, 6].
torch::Tensor fgsm_by_hand(const LinearImpl& model, const torch::Tensor& flat, const torch::Tensor& y, double eps) {
  const auto W = model.fc->weight.detach(), b = model.fc->bias.detach();
  const auto p = torch::softmax(torch::matmul(flat, W.t()) + b, -1);
  const auto grad = torch::matmul(p - torch::one_hot(y, 3).to(torch::kFloat64), W);
  return flat + eps * grad.sign();
}

TEST(Adversarial, FgsmIsEpsilonTimesTheSignOfTheInputGradient) {
  torch::manual_seed(0);
  LinearImpl model;
  model.to(torch::kFloat64);
  model.train();
  const auto x = torch::randn({5, 2, 3}, torch::kFloat64);
  const auto y = torch::tensor({0, 2, 1, 1, 0});
  const auto got = kd::adversarial_inputs(model, x, y, {}, kd::AdversarialOptions().epsilon(0.1).ratio(0.5));
  // ⌈0.5 · 5⌉ = 3 rows made adversarial, the rest as they were.
  const auto adv = fgsm_by_hand(model, x.slice(0, 0, 3).flatten(1), y.slice(0, 0, 3), 0.1);
  const auto want = torch::cat({adv.view({3, 2, 3}), x.slice(0, 3, 5)});
  EXPECT_TRUE(torch::equal(got, want));
  EXPECT_TRUE(model.is_training());              // restored
  EXPECT_FALSE(model.fc->weight.grad().defined());  // no parameter gradient touched
  // ε = 0 or ratio = 0: the inputs as they are.
  EXPECT_TRUE(torch::equal(kd::adversarial_inputs(model, x, y, {}, kd::AdversarialOptions().epsilon(0)), x));
  EXPECT_TRUE(torch::equal(kd::adversarial_inputs(model, x, y, {}, kd::AdversarialOptions().epsilon(0.1).ratio(0)), x));
}

TEST(Adversarial, FgsmExamplesStayInsideTheValidInputRange) {
  torch::manual_seed(1);
  LinearImpl model;
  model.to(torch::kFloat64);
  // Pixels at the bounds: a step outward must be clipped, a step inward kept.
  const auto x = torch::tensor({{-0.8, -0.8, 2.0, 2.0, 0.0, 1.0}}, torch::kFloat64).view({1, 2, 3}).repeat({4, 1, 1});
  const auto y = torch::tensor({0, 1, 2, 0});
  const auto o = kd::AdversarialOptions().epsilon(0.3).ratio(1.0);
  const auto raw = kd::adversarial_inputs(model, x, y, {}, o);
  const auto got = kd::adversarial_inputs(model, x, y, {}, kd::AdversarialOptions(o).input_min(-0.8).input_max(2.0));
  EXPECT_TRUE(torch::equal(got, raw.clamp(-0.8, 2.0)));
  EXPECT_GE(got.min().item<double>(), -0.8);
  EXPECT_LE(got.max().item<double>(), 2.0);
  // Some steps did cross the bounds, so the clamp changed something.
  EXPECT_LT(raw.min().item<double>(), -0.8);
  EXPECT_GT(raw.max().item<double>(), 2.0);
  kd::testing::expect_kd_error([&] { kd::adversarial_inputs(model, x, y, {}, kd::AdversarialOptions(o).input_min(1).input_max(0)); },
                               kd::ErrorCategory::kValue, {"input_min 1", "input_max 0"});
}

TEST(Adversarial, EvaluationUnderFgsmScoresTheModelOnItsOwnAdversarialExamples) {
  torch::manual_seed(2);
  LinearImpl model;
  model.to(torch::kFloat64);
  model.train();
  const auto x = torch::randn({9, 2, 3}, torch::kFloat64);
  const auto W = model.fc->weight.detach(), b = model.fc->bias.detach();
  const auto flat = x.flatten(1);
  const auto y = (torch::matmul(flat, W.t()) + b).argmax(-1);  // every clean prediction right
  const auto o = kd::AdversarialOptions().epsilon(0.5).input_min(-2.5).input_max(2.5);
  const kd::data::TensorDataset d{x, y, torch::Tensor()};
  // In batches of 4: each batch's examples are made with that batch's mean CE, whose gradient has the
  // sign of the per-example one.
  const auto adv = fgsm_by_hand(model, flat, y, 0.5).clamp(-2.5, 2.5);
  const auto want = (torch::matmul(adv, W.t()) + b).argmax(-1).eq(y).to(torch::kDouble).mean().item<double>();
  const auto got = kd::evaluate_under_fgsm(model, d, 3, o, /*batch_size=*/4);
  EXPECT_DOUBLE_EQ(got.accuracy(), want);
  EXPECT_EQ(got.count(), 9);
  EXPECT_LT(want, 1.0);  // the attack turned some right predictions wrong, so the comparison is not vacuous
  EXPECT_TRUE(model.is_training());
  EXPECT_FALSE(model.fc->weight.grad().defined());
}

TEST(Adversarial, HotFlipWritesTheTokensOfTheLargestFirstOrderGain) {
  torch::manual_seed(1);
  kd::models::TransformerEncoder enc(
      kd::models::TransformerEncoderOptions().vocab(12).layers(1).d_model(8).heads(2).pad_token(0).dropout(0.0));
  enc->to(torch::kFloat64);
  auto tokens = torch::tensor({{3, 5, 7, 2, 0, 0}, {4, 4, 9, 1, 6, 11}});
  const auto y = torch::tensor({1, 0});
  const auto got = kd::adversarial_inputs(*enc, tokens, y, {}, kd::AdversarialOptions().epsilon(0.5).ratio(1.0));
  // Independently: the embedding gradient of the loss, then every (position, token) gain by hand.
  auto out = enc->forward(tokens);
  const auto e = out.extras.at("embeddings");
  const auto g = torch::autograd::grad({kd::functional::hard_label_ce(out.logits, y)}, {e})[0];
  const auto E = enc->embed->weight.detach();
  for (int64_t r = 0; r < 2; ++r) {
    const int64_t real = tokens[r].ne(0).sum().item<int64_t>();
    const int64_t k = static_cast<int64_t>(std::ceil(0.5 * real));
    std::vector<std::pair<double, std::pair<int64_t, int64_t>>> best;  // (gain, (position, token))
    for (int64_t t = 0; t < 6; ++t) {
      const int64_t x = tokens[r][t].item<int64_t>();
      if (x == 0) continue;
      std::pair<double, int64_t> top{-1e300, -1};
      for (int64_t v = 1; v < 12; ++v) {
        if (v == x) continue;
        const double gain = torch::dot(E[v] - E[x], g[r][t]).item<double>();
        if (gain > top.first) top = {gain, v};
      }
      best.push_back({top.first, {t, top.second}});
    }
    std::sort(best.begin(), best.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    auto want = tokens[r].clone();
    for (int64_t i = 0; i < k; ++i) want[best[i].second.first] = best[i].second.second;
    EXPECT_TRUE(torch::equal(got[r], want)) << "row " << r << ": " << got[r] << " vs " << want;
    EXPECT_EQ(got[r].ne(tokens[r]).sum().item<int64_t>(), k);
  }
  EXPECT_TRUE(got[0].slice(0, 4, 6).eq(0).all().item<bool>());  // padding stays padding
}

TEST(Adversarial, TheTrainerMixesThemInAndRefusesACache) {
  auto data = kd::testing::synthetic(48, 2);
  torch::manual_seed(4);
  auto net = std::make_shared<kd::testing::MlpImpl>();
  kd::StagedTrainer trainer(kd::Student(net), std::nullopt,
                            {kd::Stage("s", torch::nn::AnyModule(kd::HardLabelCE())).steps(3)},
                            kd::StagedTrainerOptions().batch_size(16).adversarial(
                                kd::AdversarialOptions().epsilon(0.05).ratio(0.5)));
  EXPECT_EQ(trainer.fit(data).steps, 3);
  kd::testing::expect_kd_error(
      [&] {
        kd::StagedTrainer(kd::Student(net), std::nullopt, {kd::Stage("s", torch::nn::AnyModule(kd::HardLabelCE())).steps(1)},
                          kd::StagedTrainerOptions().adversarial(kd::AdversarialOptions().epsilon(0.05).ratio(2)));
      },
      kd::ErrorCategory::kConfig, {"ratio in [0, 1] (got 2)"});
}

}  // namespace
