// kd::qat::prepare against a torch.ao reference (tests/parity/qat_model.py): fake-quantized forward
// and the gradients reaching the float weights; exclusion, the clipped straight-through estimator,
// frozen observers, restore, checkpoints and the errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/quant/qat.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

// conv: Conv2d(2, 3, 3) → act (activation point) → fc: Linear(27, 4) → head: Linear(4, 2), as in qat_model.py.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3)));
    act = register_module("act", kd::qat::FakeQuantize());
    fc = register_module("fc", torch::nn::Linear(27, 4));
    head = register_module("head", torch::nn::Linear(4, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto a = act(torch::relu(conv(x)));
    return head(torch::relu(fc(a.flatten(1))));
  }
  torch::nn::Conv2d conv{nullptr};
  kd::qat::FakeQuantize act{nullptr};
  torch::nn::Linear fc{nullptr}, head{nullptr};
};
TORCH_MODULE(Net);

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("qat_model.py") + "/qat_model.json");
  return r;
}

Net reference_net() {
  Net net;
  torch::NoGradGuard ng;
  for (const auto& layer : {"conv", "fc", "head"}) {
    auto params = net->named_modules()[layer]->named_parameters(false);
    params["weight"].copy_(ref()[std::string(layer) + "_w"]);
    params["bias"].copy_(ref()[std::string(layer) + "_b"]);
  }
  return net;
}

torch::Tensor w0(const Net& net, const std::string& layer) {
  return net->named_modules()[layer]->named_parameters(false)["weight"];
}

std::string error_of(const std::function<void()>& fn, kd::ErrorCategory* category = nullptr) {
  try {
    fn();
  } catch (const kd::Error& e) {
    if (category) *category = e.category();
    return e.what();
  }
  return "no error";
}

void expect_matches_reference(const std::string& variant, const kd::qat::Options& options) {
  Net net = reference_net();
  auto qat = kd::qat::prepare(net.ptr(), options);
  torch::Tensor out;
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("call " + std::to_string(step));
    qat->refresh();
    out = net(ref()["x" + std::to_string(step)].to(torch::kFloat));
    const std::string p = variant + "_";
    EXPECT_LT(max_rel_error(out, ref()[p + "out" + std::to_string(step)]), 1e-5);
    EXPECT_LT(max_rel_error(net->act->scale, ref()[p + "act_scale" + std::to_string(step)]), 1e-6);
    EXPECT_TRUE(torch::equal(net->act->zero_point.to(torch::kLong), ref()[p + "act_zp" + std::to_string(step)]));
  }
  (out * ref()["g"].to(torch::kFloat)).sum().backward();
  for (const std::string layer : {"conv", "fc", "head"}) {
    SCOPED_TRACE(layer);
    ASSERT_TRUE(w0(net, layer).grad().defined());
    EXPECT_LT(max_rel_error(w0(net, layer).grad(), ref()[variant + "_" + layer + "_grad"]), 1e-5);
  }
  for (const auto& site : qat->weight_sites()) {
    EXPECT_LT(max_rel_error(site.quantizer->scale, ref()[variant + "_" + site.name + "_scale"]), 1e-6) << site.name;
  }
}

TEST(QAT, FakeQuantizedForwardAndWeightGradientsMatchTorchAo) { expect_matches_reference("all", {}); }

TEST(QAT, ExcludedLayersKeepExactFloatWeights) {
  expect_matches_reference("nohead", kd::qat::Options().exclude({"^head$"}));
  Net net = reference_net();
  auto qat = kd::qat::prepare(net.ptr(), kd::qat::Options().exclude({"^head$"}));
  qat->refresh();
  EXPECT_TRUE(net->head->weight.is_same(w0(net, "head")));
  EXPECT_FALSE(net->fc->weight.is_same(w0(net, "fc")));
  ASSERT_EQ(qat->weight_sites().size(), 2u);
  EXPECT_EQ(qat->weight_sites()[0].name, "conv");
  EXPECT_EQ(qat->weight_sites()[1].name, "fc");
  const auto sites = qat->sites();
  ASSERT_EQ(sites.size(), 4u);
  EXPECT_EQ(sites[0].name, "conv");
  EXPECT_EQ(sites[0].type, "Conv2d");
  EXPECT_EQ(sites[1].name, "act");
  EXPECT_EQ(sites[1].kind, kd::qat::SiteKind::kActivation);
  EXPECT_EQ(sites[3].name, "head");
  EXPECT_TRUE(sites[3].excluded);
  EXPECT_FALSE(sites[2].excluded);
  EXPECT_EQ(qat->summary(),
            "QAT int8: 2 weight sites (per-channel, [-127, 127]), 1 activation point; float: head");
  // The weight quantizers are registered in the QAT module, so its checkpoints hold them.
  EXPECT_TRUE(qat->named_buffers().contains("fc.scale"));
  EXPECT_FALSE(qat->named_buffers().contains("head.scale"));
  EXPECT_TRUE(qat->parameters().empty());
}

TEST(QAT, GradientReachesW0ThroughAClippedStraightThroughEstimator) {
  torch::manual_seed(1);
  auto net = torch::nn::Sequential(torch::nn::Linear(6, 4));
  auto fc = net->ptr<torch::nn::LinearImpl>(0);
  auto qat = kd::qat::prepare(net.ptr(), kd::qat::Options().activations(false));
  const auto x = torch::randn({8, 6});
  qat->refresh();
  net->forward(x);
  qat->freeze_observers();
  const auto w0 = qat->weight_sites()[0].weight;
  {
    // Push two weights outside the frozen range of their channels.
    torch::NoGradGuard ng;
    w0[0][3] = 10.0;
    w0[2][5] = -10.0;
  }
  qat->refresh();
  fc->weight.retain_grad();
  net->forward(x).pow(2).sum().backward();
  const auto g_w0 = w0.grad();
  const auto g_fq = fc->weight.grad();
  ASSERT_TRUE(g_w0.defined() && g_fq.defined());
  EXPECT_EQ(g_w0[0][3].item<float>(), 0.0f);
  EXPECT_EQ(g_w0[2][5].item<float>(), 0.0f);
  EXPECT_NE(g_fq[0][3].item<float>(), 0.0f);
  EXPECT_NE(g_fq[2][5].item<float>(), 0.0f);
  EXPECT_EQ((g_fq == 0).sum().item<int64_t>(), 0);
  auto inside = torch::ones_like(g_fq);
  inside[0][3] = 0;
  inside[2][5] = 0;
  EXPECT_TRUE(torch::equal(g_w0, g_fq * inside));  // 1 inside the grid, 0 where clamped
  // The clamped entries are fake-quantized to the edge of the grid: ±127·s_c.
  const auto s = qat->weight_sites()[0].quantizer->scale;
  EXPECT_FLOAT_EQ(fc->weight[0][3].item<float>(), 127 * s[0].item<float>());
  EXPECT_FLOAT_EQ(fc->weight[2][5].item<float>(), -127 * s[2].item<float>());
}

TEST(QAT, FrozenObserversKeepEveryScale) {
  torch::manual_seed(2);
  Net net;
  auto qat = kd::qat::prepare(net.ptr(), kd::qat::Options().averaging_constant(0.5));
  qat->refresh();
  net(torch::randn({4, 2, 5, 5}));
  qat->freeze_observers();
  std::vector<torch::Tensor> before;
  for (const auto& s : qat->weight_sites()) before.push_back(s.quantizer->scale.clone());
  const auto act_scale = net->act->scale.clone();
  torch::optim::SGD opt(net->parameters(), 0.5);
  for (int i = 0; i < 3; ++i) {
    qat->refresh();
    net(torch::randn({4, 2, 5, 5}) * 3).sum().backward();
    opt.step();
    opt.zero_grad();
  }
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(torch::equal(qat->weight_sites()[i].quantizer->scale, before[i]));
  EXPECT_TRUE(torch::equal(net->act->scale, act_scale));
  // Observers on again: they move.
  qat->enable_observers(true);
  qat->refresh();
  net(torch::randn({4, 2, 5, 5}) * 3);
  EXPECT_FALSE(torch::equal(net->act->scale, act_scale));
}

TEST(QAT, ObserversFrozenBeforeTheFirstRefreshStillGiveWeightScales) {
  torch::manual_seed(7);
  Net net;
  auto qat = kd::qat::prepare(net.ptr());
  EXPECT_TRUE(qat->observers_enabled());
  qat->freeze_observers();
  EXPECT_FALSE(qat->observers_enabled());
  qat->refresh();  // each weight quantizer observes W0 once instead of using torch's default scale 1
  const auto& fc = qat->weight_sites()[1];
  EXPECT_TRUE(fc.quantizer->observed());
  EXPECT_FALSE(fc.quantizer->observer_enabled());
  EXPECT_TRUE(torch::allclose(fc.quantizer->scale, std::get<0>(fc.weight.abs().max(1)) / 127));
  const auto scale = fc.quantizer->scale.clone();
  {
    torch::NoGradGuard ng;
    w0(net, "fc").mul_(2);
  }
  qat->refresh();  // observed once: frozen from now on
  EXPECT_TRUE(torch::equal(fc.quantizer->scale, scale));
}

TEST(QAT, FakeQuantOffAndRestoreGiveTheFloatModel) {
  torch::manual_seed(3);
  Net net;
  const auto x = torch::randn({3, 2, 5, 5});
  const auto float_out = net(x).detach();
  auto qat = kd::qat::prepare(net.ptr());
  qat->refresh();
  const auto fq_out = net(x).detach();
  EXPECT_FALSE(torch::allclose(fq_out, float_out, 0, 1e-7));
  EXPECT_LT((fq_out - float_out).abs().max().item<double>(), 0.1);

  qat->enable_fake_quant(false);  // observers still run: calibration only
  qat->refresh();
  EXPECT_TRUE(torch::equal(net(x), float_out));
  qat->enable_fake_quant(true);
  qat->refresh();
  EXPECT_TRUE(torch::allclose(net(x), fq_out, 1e-5, 1e-6));

  qat->restore();
  for (const std::string layer : {"conv", "fc", "head"}) {
    EXPECT_TRUE(net->named_modules()[layer]->named_parameters(false)["weight"].is_same(w0(net, layer)));
  }
  EXPECT_TRUE(net->conv->weight.is_same(w0(net, "conv")));
  EXPECT_FALSE(net->act->fake_quant_enabled());
  EXPECT_FALSE(net->act->observer_enabled());
  EXPECT_TRUE(torch::equal(net(x), float_out));
  qat->refresh();  // still float after restore
  EXPECT_TRUE(torch::equal(net(x), float_out));
}

TEST(QAT, ActivationsOffLeavesPlaceholdersDisabled) {
  Net net;
  auto qat = kd::qat::prepare(net.ptr(), kd::qat::Options().activations(false));
  EXPECT_TRUE(qat->activation_sites().empty());
  EXPECT_FALSE(net->act->fake_quant_enabled());
  EXPECT_TRUE(qat->sites()[1].excluded);
  // An excluded activation point stays disabled too.
  Net net2;
  auto qat2 = kd::qat::prepare(net2.ptr(), kd::qat::Options().exclude({"^act$"}));
  EXPECT_TRUE(qat2->activation_sites().empty());
  EXPECT_FALSE(net2->act->observer_enabled());
}

TEST(QAT, PerTensorWeightsAndMinMaxObserverOptions) {
  torch::manual_seed(4);
  Net net;
  auto qat = kd::qat::prepare(
      net.ptr(), kd::qat::Options().per_channel(false).narrow_range(false).weight_observer(kd::qat::Observer::kMinMax));
  qat->refresh();
  const auto& fc = qat->weight_sites()[1].quantizer;
  EXPECT_EQ(fc->scale.numel(), 1);
  EXPECT_EQ(fc->options().quant_min(), -128);
  // Symmetric per tensor over [-128, 127]: s = max|W| / 127.5.
  EXPECT_FLOAT_EQ(fc->scale.item<float>(), w0(net, "fc").abs().max().item<float>() / 127.5f);
}

TEST(QAT, NestedLayersAndConv1dAreFound) {
  struct BlockImpl : torch::nn::Module {
    BlockImpl() {
      conv = register_module("conv", torch::nn::Conv1d(torch::nn::Conv1dOptions(3, 4, 2)));
      proj = register_module("proj", torch::nn::Linear(4, 4));
    }
    torch::nn::Conv1d conv{nullptr};
    torch::nn::Linear proj{nullptr};
  };
  auto model = std::make_shared<torch::nn::Module>();
  model->register_module("blocks", torch::nn::ModuleList(std::make_shared<BlockImpl>(), std::make_shared<BlockImpl>()));
  auto qat = kd::qat::prepare(model, kd::qat::Options().exclude({R"(^blocks\.1\.proj$)"}));
  std::vector<std::string> names;
  for (const auto& s : qat->weight_sites()) names.push_back(s.name);
  EXPECT_THAT(names, ::testing::ElementsAre("blocks.0.conv", "blocks.0.proj", "blocks.1.conv"));
  EXPECT_TRUE(qat->named_modules().contains("blocks_0_conv"));
  qat->refresh();
  EXPECT_EQ(qat->weight_sites()[0].quantizer->scale.numel(), 4);
}

TEST(QAT, CheckpointOfTheQATModuleRestoresScales) {
  torch::manual_seed(5);
  Net net;
  auto qat = kd::qat::prepare(net.ptr());
  qat->refresh();
  net(torch::randn({2, 2, 5, 5}));
  const std::string path = kd::testing::temp_dir("qat") + "/qat.pt";
  torch::save(qat, path);
  auto qat2 = kd::qat::prepare(net.ptr());  // fresh quantizers: empty ranges, [1] scales
  torch::load(qat2, path);
  for (size_t i = 0; i < qat->weight_sites().size(); ++i) {
    EXPECT_TRUE(torch::equal(qat2->weight_sites()[i].quantizer->scale, qat->weight_sites()[i].quantizer->scale));
  }
}

TEST(QAT, DoubleModelWorks) {
  torch::manual_seed(6);
  Net net;
  net->to(torch::kFloat64);
  auto qat = kd::qat::prepare(net.ptr());
  qat->refresh();
  auto y = net(torch::randn({2, 2, 5, 5}, torch::kFloat64));
  EXPECT_EQ(y.scalar_type(), torch::kFloat64);
  y.sum().backward();
  EXPECT_TRUE(w0(net, "fc").grad().defined());
}

TEST(QAT, Errors) {
  Net net;
  kd::ErrorCategory category{};
  EXPECT_THAT(error_of([&] { kd::qat::prepare(net.ptr(), kd::qat::Options().bits(4)); }, &category),
              HasSubstr("4-bit quantization is not supported; only bits(8)"));
  EXPECT_EQ(category, kd::ErrorCategory::kValue);
  EXPECT_THAT(error_of([&] { kd::qat::prepare(net.ptr(), kd::qat::Options().exclude({"fc["})); }, &category),
              HasSubstr("exclude pattern 'fc[' is not a valid ECMAScript regex"));
  EXPECT_EQ(category, kd::ErrorCategory::kConfig);
  EXPECT_THAT(error_of([&] { kd::qat::prepare(net.ptr(), kd::qat::Options().exclude({"."})); }, &category),
              HasSubstr("every Linear/Conv layer matches exclude [.], nothing is left to quantize; the model's layers "
                        "are: conv (Conv2d), fc (Linear), head (Linear)"));
  EXPECT_EQ(category, kd::ErrorCategory::kConfig);
  auto no_layers = torch::nn::Sequential(torch::nn::ReLU(), torch::nn::Dropout(0.1));
  EXPECT_THAT(error_of([&] { kd::qat::prepare(no_layers.ptr()); }, &category),
              HasSubstr("has no torch::nn::Linear/Conv1d/Conv2d/Conv3d layer to quantize; its layers are: 0 "
                        "(torch::nn::ReLU), 1 (torch::nn::Dropout)"));
  EXPECT_EQ(category, kd::ErrorCategory::kConfig);
  EXPECT_THAT(error_of([&] { kd::qat::prepare(nullptr); }, &category), HasSubstr("null"));
  EXPECT_EQ(category, kd::ErrorCategory::kValue);
}

TEST(QAT, ModelWithoutActivationPointsQuantizesWeightsOnly) {
  auto seq = torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::ReLU(), torch::nn::Linear(4, 2));
  auto qat = kd::qat::prepare(seq.ptr());  // logs a warning
  EXPECT_EQ(qat->weight_sites().size(), 2u);
  EXPECT_TRUE(qat->activation_sites().empty());
  qat->refresh();
  EXPECT_EQ(seq->forward(torch::randn({2, 3})).sizes(), (std::vector<int64_t>{2, 2}));
}

}  // namespace
