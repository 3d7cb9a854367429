// LoRA against a PyTorch reference written from the definition (with and without dropout), plus
// merge/unmerge, adapter files, target matching, the parameter report, the initialisation and the
// errors; for both kinds of sites: a real adapter on kd::nn::Linear and the weight
// re-parametrisation of a plain torch::nn::Linear.
#include <filesystem>
#include <cmath>
#include <fstream>
#include <type_traits>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/adapters/lora.h"
#include "kd/core/error.h"
#include "kd/nn/linear.h"
#include "reference.h"

namespace {
using ::testing::HasSubstr;

// fc1 (6 -> 4) - tanh - fc2 (4 -> 3), its layers of type L (torch::nn::Linear or kd::nn::Linear).
template <typename L>
struct TwoLayerT : torch::nn::Module {
  TwoLayerT() {
    fc1 = register_module("fc1", L(6, 4));
    fc2 = register_module("fc2", L(4, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  L fc1{nullptr}, fc2{nullptr};
};
using PlainNet = TwoLayerT<torch::nn::Linear>;  // re-parametrised sites
using KdNet = TwoLayerT<kd::nn::Linear>;        // attached adapters
template <typename Net>
struct LoRAKinds : ::testing::Test {};
using Kinds = ::testing::Types<PlainNet, KdNet>;
struct KindName {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, KdNet> ? "KdNnLinear" : "TorchNnLinear";
  }
};
TYPED_TEST_SUITE(LoRAKinds, Kinds, KindName);

// Names like a transformer's: layers.{0,1}.attn.{q_proj,k_proj,v_proj} and head.
struct AttnImpl : torch::nn::Module {
  AttnImpl() {
    q_proj = register_module("q_proj", torch::nn::Linear(8, 8));
    k_proj = register_module("k_proj", torch::nn::Linear(8, 8));
    v_proj = register_module("v_proj", torch::nn::Linear(8, 8));
  }
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr};
};
struct BlockImpl : torch::nn::Module {
  BlockImpl() { attn = register_module("attn", std::make_shared<AttnImpl>()); }
  std::shared_ptr<AttnImpl> attn;
};
struct TinyTransformerImpl : torch::nn::Module {
  TinyTransformerImpl() {
    layers = register_module("layers", torch::nn::ModuleList(std::make_shared<BlockImpl>(), std::make_shared<BlockImpl>()));
    head = register_module("head", torch::nn::Linear(8, 2));
  }
  torch::nn::ModuleList layers{nullptr};
  torch::nn::Linear head{nullptr};
};

int64_t count(const std::vector<torch::Tensor>& ps) {
  int64_t n = 0;
  for (const auto& p : ps) n += p.numel();
  return n;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kd::Error& e) {
    return std::string(e.what());
  }
  return "no error";
}

TYPED_TEST(LoRAKinds, ValueAndAdapterGradientsMatchPyTorch) {
  const kd::testing::Reference ref(kd::testing::run_python("lora.py") + "/lora.json");
  auto net = std::make_shared<TypeParam>();
  net->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    net->fc1->weight.copy_(ref["w0"]);
    net->fc1->bias.copy_(ref["b"]);
  }
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).alpha(3.0).targets({"fc1"}));
  EXPECT_EQ(lora->targets(), std::vector<std::string>{"fc1"});
  EXPECT_EQ(lora->rewrites_weights(), (std::is_same_v<TypeParam, PlainNet>));
  auto params = lora->named_parameters();
  ASSERT_TRUE(params.contains("fc1.lora_A") && params.contains("fc1.lora_B"));
  {
    torch::NoGradGuard ng;
    params["fc1.lora_A"].copy_(ref["a"]);
    params["fc1.lora_B"].copy_(ref["bb"]);
  }
  params["fc1.lora_A"].set_requires_grad(true);
  params["fc1.lora_B"].set_requires_grad(true);
  lora->refresh();
  const auto y = net->fc1->forward(ref["x"]);
  EXPECT_LT(kd::testing::max_rel_error(y, ref["y"]), 1e-12);
  (y * ref["g"]).sum().backward();
  EXPECT_LT(kd::testing::max_rel_error(params["fc1.lora_A"].grad(), ref["grad_a"]), 1e-12);
  EXPECT_LT(kd::testing::max_rel_error(params["fc1.lora_B"].grad(), ref["grad_b"]), 1e-12);
  // The base model is frozen whole, target or not.
  for (const auto& p : net->named_parameters()) {
    EXPECT_FALSE(p.value().requires_grad()) << p.key();
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
}

TYPED_TEST(LoRAKinds, StartsAsTheBaseModelAndOnlyAdaptersGetGradients) {
  torch::manual_seed(0);
  auto net = std::make_shared<TypeParam>();
  const auto x = torch::randn({7, 6});
  const auto before = net->forward(x).detach();
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2));
  EXPECT_EQ(lora->targets(), (std::vector<std::string>{"fc1", "fc2"}));
  lora->refresh();
  EXPECT_TRUE(torch::equal(net->forward(x), before));  // B = 0 at the start
  net->forward(x).pow(2).sum().backward();
  for (const auto& p : lora->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    // With B = 0 only B's gradient is non-zero (dL/dA = s·Bᵀ·(...) = 0).
    if (p.key().find("lora_B") != std::string::npos) EXPECT_GT(p.value().grad().abs().sum().template item<double>(), 0) << p.key();
  }
  for (const auto& p : net->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
}

TYPED_TEST(LoRAKinds, MergeAndUnmergeRoundTripInFloat32) {
  torch::manual_seed(1);
  auto net = std::make_shared<TypeParam>();
  const auto x = torch::randn({16, 6});
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(3).alpha(6));
  const auto w0 = net->named_parameters()["fc1.weight"].detach().clone();
  lora->refresh();
  const auto base_out = net->forward(x).detach();
  torch::optim::SGD opt(lora->parameters(), 0.5);
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    lora->refresh();
    (net->forward(x) - 1).pow(2).mean().backward();
    opt.step();
  }
  lora->refresh();
  const auto unmerged = net->forward(x).detach();
  ASSERT_GT((unmerged - base_out).abs().max().template item<float>(), 1e-3f);  // the adapters did change the function
  lora->merge();
  EXPECT_TRUE(lora->merged());
  EXPECT_TRUE(net->fc1->weight.is_same(net->named_parameters()["fc1.weight"]));  // an ordinary model now
  EXPECT_LT((net->forward(x) - unmerged).abs().max().template item<float>(), 1e-6f);
  lora->refresh();  // no double counting after a merge
  EXPECT_LT((net->forward(x) - unmerged).abs().max().template item<float>(), 1e-6f);
  lora->unmerge();
  EXPECT_LT((net->named_parameters()["fc1.weight"] - w0).abs().max().template item<float>(), 1e-6f);
  EXPECT_LT((net->forward(x) - unmerged).abs().max().template item<float>(), 1e-6f);
}

TEST(LoRA, TargetsMatchExactNamesSuffixesAndRegexes) {
  auto targets = [](const std::vector<std::string>& t) {
    auto net = std::make_shared<TinyTransformerImpl>();
    return kd::lora::apply(net, kd::lora::Options().rank(2).targets(t))->targets();
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(targets({"q_proj", "v_proj"}),
            (V{"layers.0.attn.q_proj", "layers.0.attn.v_proj", "layers.1.attn.q_proj", "layers.1.attn.v_proj"}));
  EXPECT_EQ(targets({"attn.k_proj"}), (V{"layers.0.attn.k_proj", "layers.1.attn.k_proj"}));
  EXPECT_EQ(targets({"head"}), (V{"head"}));
  EXPECT_EQ(targets({"re:^layers\\.1\\..*_proj$"}), (V{"layers.1.attn.q_proj", "layers.1.attn.k_proj", "layers.1.attn.v_proj"}));
  // "proj" is not a dotted suffix of "q_proj": no partial-word matches.
  EXPECT_THAT(error_of([&] { targets({"proj"}); }), HasSubstr("no Linear layer matches targets [proj]"));
}

TEST(LoRA, ReportCountsTrainableAgainstAllParameters) {
  auto net = std::make_shared<TinyTransformerImpl>();
  const int64_t base = count(net->parameters());  // 6·(8·8+8) + 8·2+2 = 450
  ASSERT_EQ(base, 450);
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"q_proj", "v_proj"}));
  const auto r = lora->report();
  EXPECT_EQ(r.trainable, 4 * (2 * 8 + 8 * 2));
  EXPECT_EQ(r.total, base + r.trainable);
  EXPECT_EQ(r.to_string(), "trainable 128 of 578 parameters (22.15 %)");
  EXPECT_DOUBLE_EQ(lora->scale(), 16.0 / 2);
  EXPECT_DOUBLE_EQ(kd::lora::apply(std::make_shared<TinyTransformerImpl>(),
                                   kd::lora::Options().rank(4).alpha(8).rslora(true).targets({"q_proj"}))->scale(),
                   8.0 / 2.0);
}

TYPED_TEST(LoRAKinds, AdapterFileRoundTripsAndBadFilesChangeNothing) {
  const auto dir = kd::testing::temp_dir("lora");
  const auto path = dir + "/adapter.pt";
  torch::manual_seed(2);
  auto net = std::make_shared<TypeParam>();
  const auto base_state = net->named_parameters();
  const auto x = torch::randn({9, 6});
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
  torch::optim::Adam opt(lora->parameters(), 0.05);
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    lora->refresh();
    net->forward(x).pow(2).mean().backward();
    opt.step();
  }
  lora->refresh();
  const auto trained = net->forward(x).detach();
  lora->save_adapter(path);
  // The adapter file is small: only A and B.
  EXPECT_LT(std::filesystem::file_size(path), 4000u);

  // Same base weights, fresh adapters, then load: the trained function again.
  auto other = std::make_shared<TypeParam>();
  {
    torch::NoGradGuard ng;
    for (auto& p : other->named_parameters()) p.value().copy_(base_state[p.key()]);
  }
  auto other_lora = kd::lora::apply(other, kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
  other_lora->refresh();
  EXPECT_FALSE(torch::allclose(other->forward(x), trained));
  other_lora->load_adapter(path);
  EXPECT_TRUE(torch::allclose(other->forward(x), trained, 0, 1e-6));

  // Loading into a merged model keeps it merged, with the loaded update.
  other_lora->merge();
  other_lora->load_adapter(path);
  EXPECT_TRUE(other_lora->merged());
  EXPECT_LT((other->forward(x) - trained).abs().max().template item<float>(), 1e-6f);
  other_lora->unmerge();

  const auto a_before = other_lora->named_parameters()["fc1.lora_A"].clone();
  EXPECT_THAT(error_of([&] { other_lora->load_adapter(dir + "/missing.pt"); }), HasSubstr("does not exist"));
  {
    std::ofstream(dir + "/garbage.pt") << "not an archive";
  }
  EXPECT_THAT(error_of([&] { other_lora->load_adapter(dir + "/garbage.pt"); }), HasSubstr("format error"));
  auto third = std::make_shared<TypeParam>();
  auto fc1_only = kd::lora::apply(third, kd::lora::Options().rank(2).targets({"fc1"}));
  EXPECT_THAT(error_of([&] { fc1_only->load_adapter(path); }),
              HasSubstr("has sites [fc1, fc2] but this model's adapters are [fc1]"));
  auto fourth = std::make_shared<TypeParam>();
  auto rank1 = kd::lora::apply(fourth, kd::lora::Options().rank(1));
  EXPECT_THAT(error_of([&] { rank1->load_adapter(path); }), HasSubstr("has rank 2 but this LoRA has rank 1"));
  EXPECT_TRUE(torch::equal(other_lora->named_parameters()["fc1.lora_A"], a_before));
}

TEST(LoRA, ErrorsNameTheProblem) {
  auto message = [&](const kd::lora::Options& o) {
    auto net = std::make_shared<PlainNet>();
    return error_of([&] { kd::lora::apply(net, o); });
  };
  EXPECT_THAT(message(kd::lora::Options().targets({"conv1"})), HasSubstr("Linear layers are: fc1, fc2"));
  EXPECT_THAT(message(kd::lora::Options().rank(0)), HasSubstr("rank must be > 0"));
  EXPECT_THAT(message(kd::lora::Options().rank(5)), HasSubstr("rank 5 exceeds min(in, out) = 4 of Linear 'fc1'"));
  EXPECT_THAT(message(kd::lora::Options().alpha(0)), HasSubstr("alpha must be > 0"));
  EXPECT_THAT(message(kd::lora::Options().targets({"re:("})), HasSubstr("not a valid regex"));
  EXPECT_THAT(message(kd::lora::Options().dropout(1.0)), HasSubstr("dropout must be in [0, 1)"));
  // Dropout needs the layer's input: plain torch::nn::Linear targets are named, with the fix.
  EXPECT_THAT(message(kd::lora::Options().rank(2).dropout(0.1)),
              HasSubstr("dropout 0.1 needs each adapter to see its layer's input, but [fc1, fc2] are plain "
                        "torch::nn::Linear"));
  EXPECT_THAT(message(kd::lora::Options().rank(2).dropout(0.1).targets({"fc2"})),
              HasSubstr("declare it as kd::nn::Linear (kd/nn/linear.h) in the model, or use dropout 0"));
  // A refused apply() left the model alone: nothing attached, nothing frozen.
  auto kd_net = std::make_shared<KdNet>();
  EXPECT_THAT(error_of([&] { kd::lora::apply(kd_net, kd::lora::Options().rank(5)); }), HasSubstr("exceeds"));
  EXPECT_FALSE(kd_net->fc1->adapter());
  EXPECT_TRUE(kd_net->fc1->weight.requires_grad());
  // A kd::nn::Linear takes one adapter: apply() twice is a state error.
  kd::lora::apply(kd_net, kd::lora::Options().rank(2).targets({"fc1"}));
  try {
    kd::lora::apply(kd_net, kd::lora::Options().rank(2).targets({"fc1"}));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kState);
    EXPECT_THAT(e.what(), HasSubstr("Linear 'fc1' already has a 'lora' adapter attached"));
  }
}

TEST(LoRA, AIsKaimingUniformWithinOneOverSqrtFanIn) {
  // kaiming_uniform_(a = √5): bound = gain·√(3 / fan_in), gain = √(2 / (1 + 5)), i.e. 1/√in; std = bound/√3.
  torch::manual_seed(21);
  const int64_t in = 4096, rank = 8;
  auto net = torch::nn::Sequential(torch::nn::Linear(in, 16));
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(rank));
  const auto a = lora->named_parameters()["0.lora_A"];
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{rank, in}));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  EXPECT_LE(a.abs().max().item<double>(), bound);
  EXPECT_GT(a.abs().max().item<double>(), 0.99 * bound);  // 32 768 draws reach the edge
  EXPECT_NEAR(a.std().item<double>(), bound / std::sqrt(3.0), 0.02 * bound);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.02 * bound);
  EXPECT_LT(a.min().item<double>(), -0.99 * bound);  // not all equal: both edges are reached
  EXPECT_TRUE(torch::equal(lora->named_parameters()["0.lora_B"], torch::zeros({16, rank})));
}

TEST(LoRA, DropoutOnTheAdapterInputMatchesPyTorch) {
  const auto dir = kd::testing::run_python("lora.py");
  const kd::testing::Reference ref(dir + "/lora.json"), drop(dir + "/lora_dropout.json");
  auto net = std::make_shared<KdNet>();
  net->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    net->fc1->weight.copy_(ref["w0"]);
    net->fc1->bias.copy_(ref["b"]);
  }
  auto lora = kd::lora::apply(net, kd::lora::Options().rank(2).alpha(4.0).dropout(0.25).targets({"fc1"}));
  EXPECT_EQ(lora->attached_targets(), std::vector<std::string>{"fc1"});
  auto params = lora->named_parameters();
  {
    torch::NoGradGuard ng;
    params["fc1.lora_A"].copy_(drop["a"]);
    params["fc1.lora_B"].copy_(drop["bb"]);
  }
  for (auto* k : {"fc1.lora_A", "fc1.lora_B"}) params[k].set_requires_grad(true);
  // Eval mode: no dropout.
  net->eval();
  EXPECT_LT(kd::testing::max_rel_error(net->fc1->forward(ref["x"]), drop["y_eval"]), 1e-12);
  // Train mode: the mask PyTorch's dropout draws from the same seed, on x only (base(x) is not dropped).
  net->train();
  torch::manual_seed(123);
  const auto y = net->fc1->forward(ref["x"]);
  EXPECT_LT(kd::testing::max_rel_error(y, drop["y_train"]), 1e-12);
  ASSERT_GT((drop["kept"] == 0).sum().item<int64_t>(), 0) << "the reference should drop something";
  (y * ref["g"]).sum().backward();
  EXPECT_LT(kd::testing::max_rel_error(params["fc1.lora_A"].grad(), drop["grad_a"]), 1e-12);
  EXPECT_LT(kd::testing::max_rel_error(params["fc1.lora_B"].grad(), drop["grad_b"]), 1e-12);
  // Merged: the adapter is folded into W0 and its forward (and dropout) no longer runs.
  lora->merge();
  torch::manual_seed(123);
  const auto merged = net->fc1->forward(ref["x"]);
  EXPECT_LT(kd::testing::max_rel_error(merged, drop["y_eval"]), 1e-12);
}

TEST(LoRA, DropoutStatisticsInTrainingMode) {
  // A = B = I and s = 1: the adapter's term is dropout(x) itself, so y_train − y_eval shows the mask.
  torch::manual_seed(5);
  kd::nn::Linear layer(4, 4);
  auto holder = torch::nn::Sequential(layer);
  const double p = 0.3;
  auto lora = kd::lora::apply(holder.ptr(), kd::lora::Options().rank(4).alpha(4).dropout(p));
  {
    torch::NoGradGuard ng;
    lora->named_parameters()["0.lora_A"].copy_(torch::eye(4));
    lora->named_parameters()["0.lora_B"].copy_(torch::eye(4));
  }
  const auto x = torch::rand({20000, 4}) + 0.5;  // no zeros of its own
  layer->eval();
  const auto y_eval = layer->forward(x).detach();
  layer->train();
  const auto delta = (layer->forward(x).detach() - y_eval + x).detach();  // = dropout(x)
  const auto dropped = delta.abs() < 1e-5;
  const auto kept = ~dropped;
  EXPECT_TRUE(torch::allclose(delta.masked_select(kept), (x / (1 - p)).masked_select(kept), 1e-5, 1e-5));
  const double n = static_cast<double>(x.numel());
  const double rate = dropped.sum().item<double>() / n;
  EXPECT_NEAR(rate, p, 4 * std::sqrt(p * (1 - p) / n));  // 4 sigma
  // Two forwards draw different masks; eval mode draws none.
  EXPECT_FALSE(torch::equal(layer->forward(x), layer->forward(x)));
  layer->eval();
  EXPECT_TRUE(torch::equal(layer->forward(x), y_eval));
}

TEST(LoRA, AttachedAndReparametrisedSitesComputeTheSameFunction) {
  torch::manual_seed(8);
  auto plain = std::make_shared<PlainNet>();
  auto attached = std::make_shared<KdNet>();
  {
    torch::NoGradGuard ng;
    auto src = plain->named_parameters();
    for (auto& p : attached->named_parameters()) p.value().copy_(src[p.key()]);
  }
  auto lp = kd::lora::apply(plain, kd::lora::Options().rank(2).alpha(3));
  auto la = kd::lora::apply(attached, kd::lora::Options().rank(2).alpha(3));
  {
    torch::NoGradGuard ng;
    auto src = la->named_parameters();
    for (auto& p : src) p.value().copy_(torch::randn_like(p.value()));  // B ≠ 0: a real update
    for (auto& p : lp->named_parameters()) p.value().copy_(src[p.key()]);
  }
  const auto x = torch::randn({5, 6});
  lp->refresh();
  la->refresh();
  EXPECT_LT((plain->forward(x) - attached->forward(x)).abs().max().item<float>(), 1e-5f);
  // The attached kind never touches the `weight` member; the model's state dict has no adapter entries.
  EXPECT_TRUE(attached->fc1->weight.is_same(attached->named_parameters()["fc1.weight"]));
  EXPECT_FALSE(plain->fc1->weight.is_same(plain->named_parameters()["fc1.weight"]));
  EXPECT_EQ(attached->named_parameters().keys(), plain->named_parameters().keys());
  EXPECT_EQ(la->report().to_string(), lp->report().to_string());
}

}  // namespace
