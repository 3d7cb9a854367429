// kd::nn::Linear: exactly torch::nn::Linear without an adapter (same output, same state dict, castable
// to torch::nn::LinearImpl), y + adapter(x) with one, the layer's mode passed to the adapter, clone()
// keeping the type, and the attach errors.
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/nn/linear.h"
#include "reference.h"

namespace {
using ::testing::HasSubstr;

// adapter(x) = k·x.sum(1, keepdim) broadcast over the outputs; records the mode it was called in.
struct SumAdapter : kd::nn::LinearAdapter {
  explicit SumAdapter(double k) : k(k) {}
  torch::Tensor forward(const torch::Tensor& x, bool training) override {
    ++calls;
    last_training = training;
    return x.sum(1, /*keepdim=*/true) * k;
  }
  bool active() const override { return on; }
  std::string kind() const override { return "sum"; }
  double k;
  bool on = true, last_training = false;
  int calls = 0;
};

TEST(KdLinear, WithoutAnAdapterIsExactlyTorchLinear) {
  torch::manual_seed(0);
  kd::nn::Linear ours(5, 3);
  torch::nn::Linear theirs(5, 3);
  {
    torch::NoGradGuard ng;
    theirs->weight.copy_(ours->weight);
    theirs->bias.copy_(ours->bias);
  }
  const auto x = torch::randn({4, 5});
  EXPECT_TRUE(torch::equal(ours->forward(x), theirs->forward(x)));
  EXPECT_TRUE(torch::equal(ours->forward(x), torch::addmm(ours->bias, x, ours->weight.t())));
  EXPECT_EQ(ours->named_parameters().keys(), theirs->named_parameters().keys());
  // Its file loads into a torch::nn::Linear and back: the same state.
  const auto path = kd::testing::temp_dir("kd_linear") + "/l.pt";
  torch::save(ours, path);
  torch::nn::Linear loaded(5, 3);
  torch::load(loaded, path);
  EXPECT_TRUE(torch::equal(loaded->weight, ours->weight));
  // Code that looks for torch::nn::Linear layers (QAT, LoRA) finds it.
  std::shared_ptr<torch::nn::Module> as_module = ours.ptr();
  EXPECT_TRUE(std::dynamic_pointer_cast<torch::nn::LinearImpl>(as_module));
  EXPECT_EQ(ours->forward_calls(), 2);
}

TEST(KdLinear, AttachedAdapterAddsItsTermWithTheLayersMode) {
  torch::manual_seed(1);
  kd::nn::Linear layer(4, 2);
  auto adapter = std::make_shared<SumAdapter>(0.5);
  const auto x = torch::randn({3, 4});
  const auto base = layer->forward(x).detach();
  layer->attach(adapter);
  EXPECT_TRUE(torch::allclose(layer->forward(x), base + 0.5 * x.sum(1, true)));
  EXPECT_TRUE(adapter->last_training);
  layer->eval();
  layer->forward(x);
  EXPECT_FALSE(adapter->last_training);
  adapter->on = false;  // inactive: not called, the plain output
  const int calls = adapter->calls;
  EXPECT_TRUE(torch::equal(layer->forward(x), base));
  EXPECT_EQ(adapter->calls, calls);
  // The weight member is what the base forward uses (a re-parametrisation such as QAT's is honoured).
  adapter->on = true;
  layer->weight = torch::zeros_like(layer->weight);
  EXPECT_TRUE(torch::allclose(layer->forward(x), layer->bias + 0.5 * x.sum(1, true)));
  layer->detach();
  EXPECT_FALSE(layer->adapter());
}

TEST(KdLinear, CloneKeepsTheTypeAndCopiesTheParametersWithoutTheAdapter) {
  torch::manual_seed(2);
  kd::nn::Linear layer(torch::nn::LinearOptions(3, 2).bias(false));
  layer->attach(std::make_shared<SumAdapter>(1.0));
  auto copy = std::dynamic_pointer_cast<kd::nn::LinearImpl>(layer->clone());
  ASSERT_TRUE(copy) << "clone() sliced the module to torch::nn::LinearImpl";
  EXPECT_TRUE(torch::equal(copy->weight, layer->weight));
  EXPECT_FALSE(copy->weight.is_same(layer->weight));
  EXPECT_FALSE(copy->bias.defined());
  EXPECT_FALSE(copy->adapter());
  EXPECT_TRUE(copy->weight.is_same(copy->named_parameters()["weight"]));
  // In a container, a deep copy keeps kd::nn::Linear too.
  auto seq = torch::nn::Sequential(kd::nn::Linear(3, 2));
  auto seq_copy = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(seq->clone());
  EXPECT_TRUE(seq_copy->ptr<kd::nn::LinearImpl>(0));
}

TEST(KdLinear, SecondAdapterIsAStateErrorAndPrintingNamesIt) {
  kd::nn::Linear layer(4, 2);
  layer->attach(std::make_shared<SumAdapter>(1.0));
  try {
    layer->attach(std::make_shared<SumAdapter>(2.0));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kState);
    EXPECT_THAT(e.what(), HasSubstr("already has a 'sum' adapter attached"));
  }
  EXPECT_THROW(layer->attach(nullptr), kd::Error);
  std::ostringstream s;
  layer->pretty_print(s);
  EXPECT_EQ(s.str(), "kd::nn::Linear(in_features=4, out_features=2, bias=true, adapter=sum)");
}

}  // namespace
