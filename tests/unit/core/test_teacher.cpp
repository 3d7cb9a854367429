// kd::Teacher stays frozen: eval mode, no grads, no-grad forward.
#include <gtest/gtest.h>

#include "kd/kd.h"

namespace {

struct NetImpl : kd::Model {
  NetImpl() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    drop = register_module("drop", torch::nn::Dropout(0.5));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = fc->forward(drop->forward(x));
    return out;
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::Dropout drop{nullptr};
};

TEST(Teacher, StaysInEvalModeWhateverTrainIsCalledWith) {
  auto net = std::make_shared<NetImpl>();
  kd::Teacher teacher(net);
  EXPECT_FALSE(teacher->is_training());
  EXPECT_FALSE(net->is_training());
  teacher->train();
  EXPECT_FALSE(net->is_training());
  EXPECT_FALSE(net->drop->is_training());

  // A parent module's train() recurses into the teacher and must not unfreeze it.
  struct Holder : torch::nn::Module {} holder;
  holder.register_module("teacher", teacher);
  holder.train(true);
  EXPECT_FALSE(net->is_training());

  // Reaching past the wrapper: the next forward puts it back in eval mode,
  // so dropout is off and two forwards agree.
  net->train(true);
  auto x = torch::ones({8, 4});
  auto a = teacher->forward(x).logits;
  auto b = teacher->forward(x).logits;
  EXPECT_FALSE(net->is_training());
  EXPECT_TRUE(torch::equal(a, b));
}

TEST(Teacher, NoParameterRequiresGradAndNoneGetsAGradAfterATrainingStep) {
  auto tnet = std::make_shared<NetImpl>();
  kd::Teacher teacher(tnet);
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.requires_grad());

  kd::Student student(std::make_shared<NetImpl>());
  torch::optim::SGD opt(student->parameters(), torch::optim::SGDOptions(0.1));
  kd::TemperatureKL kl;
  kd::DistillBatch batch;
  auto x = torch::randn({8, 4});
  batch.teacher = teacher->forward(x);
  EXPECT_FALSE(batch.teacher.logits.requires_grad());
  batch.student = student->forward(x);
  auto r = kl->forward(batch);
  opt.zero_grad();
  r.total.backward();
  opt.step();
  for (const auto& p : teacher->parameters()) {
    EXPECT_FALSE(p.grad().defined());
    EXPECT_FALSE(p.requires_grad());
  }
  bool student_got_grads = false;
  for (const auto& p : student->parameters()) student_got_grads |= p.grad().defined();
  EXPECT_TRUE(student_got_grads);
}

TEST(Teacher, InputGradientsFlowButParametersStayFrozen) {
  auto net = std::make_shared<NetImpl>();
  kd::Teacher teacher(net);
  auto x = torch::randn({2, 4}, torch::kFloat64).requires_grad_(true);
  net->to(torch::kFloat64);
  auto out = teacher->forward_with_input_grad(x);
  auto g = torch::autograd::grad({out.logits.sum()}, {x})[0];
  // d(sum(W x + b))/dx = column sums of W (dropout is off in eval mode).
  auto expected = net->fc->weight.sum(0).expand({2, 4});
  EXPECT_TRUE(torch::allclose(g, expected));
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());

  EXPECT_THROW(teacher->forward_with_input_grad(torch::ones({2, 4}, torch::kFloat64)), kd::Error);
}

TEST(Teacher, NullModelIsRejected) {
  EXPECT_THROW(kd::Teacher{kd::ModelPtr{}}, kd::Error);
  EXPECT_THROW(kd::Student{kd::ModelPtr{}}, kd::Error);
}

}  // namespace
