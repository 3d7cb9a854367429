// LoRA against a PyTorch reference written from the definition, plus merge/unmerge, adapter files,
// target matching, the parameter report and the errors.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kd/adapters/lora.h"
#include "kd/core/error.h"
#include "reference.h"

namespace {
using ::testing::HasSubstr;

struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 4));
    fc2 = register_module("fc2", torch::nn::Linear(4, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(TwoLayer);

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

TEST(LoRA, ValueAndAdapterGradientsMatchPyTorch) {
  const kd::testing::Reference ref(kd::testing::run_python("lora.py") + "/lora.json");
  TwoLayer net;
  net->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    net->fc1->weight.copy_(ref["w0"]);
    net->fc1->bias.copy_(ref["b"]);
  }
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(2).alpha(3.0).targets({"fc1"}));
  EXPECT_EQ(lora->targets(), std::vector<std::string>{"fc1"});
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

TEST(LoRA, StartsAsTheBaseModelAndOnlyAdaptersGetGradients) {
  torch::manual_seed(0);
  TwoLayer net;
  const auto x = torch::randn({7, 6});
  const auto before = net->forward(x).detach();
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(2));
  EXPECT_EQ(lora->targets(), (std::vector<std::string>{"fc1", "fc2"}));
  lora->refresh();
  EXPECT_TRUE(torch::equal(net->forward(x), before));  // B = 0 at the start
  net->forward(x).pow(2).sum().backward();
  for (const auto& p : lora->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    // With B = 0 only B's gradient is non-zero (dL/dA = s·Bᵀ·(...) = 0).
    if (p.key().find("lora_B") != std::string::npos) EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
  for (const auto& p : net->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
}

TEST(LoRA, MergeAndUnmergeRoundTripInFloat32) {
  torch::manual_seed(1);
  TwoLayer net;
  const auto x = torch::randn({16, 6});
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(3).alpha(6));
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
  ASSERT_GT((unmerged - base_out).abs().max().item<float>(), 1e-3f);  // the adapters did change the function
  lora->merge();
  EXPECT_TRUE(lora->merged());
  EXPECT_TRUE(net->fc1->weight.is_same(net->named_parameters()["fc1.weight"]));  // an ordinary model now
  EXPECT_LT((net->forward(x) - unmerged).abs().max().item<float>(), 1e-6f);
  lora->refresh();  // no double counting after a merge
  EXPECT_LT((net->forward(x) - unmerged).abs().max().item<float>(), 1e-6f);
  lora->unmerge();
  EXPECT_LT((net->named_parameters()["fc1.weight"] - w0).abs().max().item<float>(), 1e-6f);
  EXPECT_LT((net->forward(x) - unmerged).abs().max().item<float>(), 1e-6f);
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

TEST(LoRA, AdapterFileRoundTripsAndBadFilesChangeNothing) {
  const auto dir = kd::testing::temp_dir("lora");
  const auto path = dir + "/adapter.pt";
  torch::manual_seed(2);
  TwoLayer net;
  const auto base_state = net->named_parameters();
  const auto x = torch::randn({9, 6});
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
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
  TwoLayer other;
  {
    torch::NoGradGuard ng;
    for (auto& p : other->named_parameters()) p.value().copy_(base_state[p.key()]);
  }
  auto other_lora = kd::lora::apply(other.ptr(), kd::lora::Options().rank(2).targets({"fc1", "fc2"}));
  other_lora->refresh();
  EXPECT_FALSE(torch::allclose(other->forward(x), trained));
  other_lora->load_adapter(path);
  EXPECT_TRUE(torch::allclose(other->forward(x), trained, 0, 1e-6));

  // Loading into a merged model keeps it merged, with the loaded update.
  other_lora->merge();
  other_lora->load_adapter(path);
  EXPECT_TRUE(other_lora->merged());
  EXPECT_LT((other->forward(x) - trained).abs().max().item<float>(), 1e-6f);
  other_lora->unmerge();

  const auto a_before = other_lora->named_parameters()["fc1.lora_A"].clone();
  EXPECT_THAT(error_of([&] { other_lora->load_adapter(dir + "/missing.pt"); }), HasSubstr("does not exist"));
  {
    std::ofstream(dir + "/garbage.pt") << "not an archive";
  }
  EXPECT_THAT(error_of([&] { other_lora->load_adapter(dir + "/garbage.pt"); }), HasSubstr("format error"));
  TwoLayer third;
  auto fc1_only = kd::lora::apply(third.ptr(), kd::lora::Options().rank(2).targets({"fc1"}));
  EXPECT_THAT(error_of([&] { fc1_only->load_adapter(path); }),
              HasSubstr("has sites [fc1, fc2] but this model's adapters are [fc1]"));
  TwoLayer fourth;
  auto rank1 = kd::lora::apply(fourth.ptr(), kd::lora::Options().rank(1));
  EXPECT_THAT(error_of([&] { rank1->load_adapter(path); }), HasSubstr("has rank 2 but this LoRA has rank 1"));
  EXPECT_TRUE(torch::equal(other_lora->named_parameters()["fc1.lora_A"], a_before));
}

TEST(LoRA, ErrorsNameTheProblem) {
  auto message = [&](const kd::lora::Options& o) {
    TwoLayer net;
    return error_of([&] { kd::lora::apply(net.ptr(), o); });
  };
  EXPECT_THAT(message(kd::lora::Options().targets({"conv1"})), HasSubstr("Linear layers are: fc1, fc2"));
  EXPECT_THAT(message(kd::lora::Options().rank(0)), HasSubstr("rank must be > 0"));
  EXPECT_THAT(message(kd::lora::Options().rank(5)), HasSubstr("rank 5 exceeds min(in, out) = 4 of Linear 'fc1'"));
  EXPECT_THAT(message(kd::lora::Options().alpha(0)), HasSubstr("alpha must be > 0"));
  EXPECT_THAT(message(kd::lora::Options().targets({"re:("})), HasSubstr("not a valid regex"));
  EXPECT_THAT(message(kd::lora::Options().dropout(0.1)), HasSubstr("dropout 0.1 is not supported"));
}

}  // namespace
