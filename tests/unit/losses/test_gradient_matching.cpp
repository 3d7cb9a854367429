// GradientMatching (R1) against PyTorch references (tests/parity/gradient_matching.py), errors.
#include <cstdio>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/student.h"
#include "kd/core/teacher.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/temperature_kl.h"
#include "kd/models/cnn.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("gradient_matching.py") + "/gradient_matching.json");
  return r;
}

// conv(3×3, pad 1) -> tanh -> flatten -> linear, weights from the reference (prefix "img_s_" or "img_t_").
class ImageNetImpl : public kd::Model {
 public:
  explicit ImageNetImpl(const std::string& prefix) {
    for (const char* n : {"conv_w", "conv_b", "fc_w", "fc_b"}) params[n] = register_parameter(n, ref()[prefix + n].clone());
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    const auto h = torch::tanh(torch::conv2d(x, params["conv_w"], params["conv_b"], /*stride=*/1, /*padding=*/1));
    out.logits = torch::linear(h.flatten(1), params["fc_w"], params["fc_b"]);
    return out;
  }
  std::map<std::string, torch::Tensor> params;
};

// emb = E[tokens]; h_l = tanh(W1·mean_{j≤l} emb_j + b1); logits_l = W2·h_l + b2. Embeddings go to extras.
class TokenNetImpl : public kd::Model {
 public:
  explicit TokenNetImpl(const std::string& prefix) {
    for (const char* n : {"emb", "w1", "b1", "w2", "b2"}) params[n] = register_parameter(n, ref()[prefix + n].clone());
  }
  kd::ModelOutput forward(const torch::Tensor& tokens) override {
    auto emb = params["emb"].index_select(0, tokens.reshape({-1})).view({tokens.size(0), tokens.size(1), -1});
    // A frozen model's embeddings are a fresh leaf: make them differentiable for R1.
    if (torch::GradMode::is_enabled() && !emb.requires_grad()) emb.requires_grad_(true);
    const auto counts = torch::arange(1, tokens.size(1) + 1, emb.options()).view({1, -1, 1});
    const auto h = torch::tanh(torch::linear(emb.cumsum(1) / counts, params["w1"], params["b1"]));
    kd::ModelOutput out;
    out.logits = torch::linear(h, params["w2"], params["b2"]);
    out.extras["embeddings"] = emb;
    return out;
  }
  std::map<std::string, torch::Tensor> params;
};

struct ImageCase {
  std::shared_ptr<ImageNetImpl> student = std::make_shared<ImageNetImpl>("img_s_");
  kd::Teacher teacher{std::make_shared<ImageNetImpl>("img_t_")};
  kd::DistillBatch batch;

  explicit ImageCase(double progress = 0.25) {
    batch.inputs = ref()["img_x"].clone().requires_grad_(true);
    batch.teacher_inputs = ref()["img_x"].clone().requires_grad_(true);
    batch.targets = ref()["img_y"];
    batch.student = student->forward(batch.inputs);
    batch.teacher = teacher->forward_with_input_grad(batch.teacher_inputs);
    batch.step.progress = progress;
  }
};

TEST(GradientMatching, ImageCaseMatchesPyTorchValuePartsAndParameterGradients) {
  ImageCase c;
  kd::GradientMatching r1(kd::GradientMatchingOptions().temperature(2.0));  // default λ schedule
  EXPECT_TRUE(r1->needs_input_grad());
  auto r = r1->forward(c.batch);
  EXPECT_LT(max_rel_error(r.total, ref()["img_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1"), ref()["img_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.grad_mse"), ref()["img_grad_mse"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.kl"), ref()["img_kl"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.lambda"), ref()["img_lambda"]), 1e-12);
  // The input gradients themselves, and the functional twin (before the backward frees the graph).
  const auto g_s = kd::functional::task_input_gradient(c.batch.student.logits, c.batch.inputs, c.batch.targets, false);
  const auto g_t = kd::functional::task_input_gradient(c.batch.teacher.logits, c.batch.teacher_inputs, c.batch.targets, false);
  EXPECT_LT(max_rel_error(g_s, ref()["img_g_s"]), 1e-6);
  EXPECT_LT(max_rel_error(g_t, ref()["img_g_t"]), 1e-6);
  const auto f = kd::functional::gradient_matching(c.batch.student.logits, c.batch.inputs, c.batch.teacher.logits,
                                                   c.batch.teacher_inputs, c.batch.targets, 0.675,
                                                   kd::GradientMatchingOptions().temperature(2.0));
  EXPECT_LT(max_rel_error(f, ref()["img_loss"]), 1e-6);
  r.total.backward();
  for (const auto& [name, p] : c.student->params) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_LT(max_rel_error(p.grad(), ref()["img_grad_" + name]), 1e-6) << "gradient of " << name;
  }
  // The teacher gets nothing: no parameter gradient, and its input leaf is left alone by the loss's backward.
  for (const auto& p : c.teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(c.batch.teacher_inputs.grad().defined());
}

TEST(GradientMatching, TokenCaseComparesPerTokenGradientNormsOfTheEmbeddings) {
  auto student = std::make_shared<TokenNetImpl>("tok_s_");
  auto teacher = std::make_shared<TokenNetImpl>("tok_t_");
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  kd::DistillBatch batch;
  batch.inputs = ref()["tok_tokens"];
  batch.targets = ref()["tok_targets"];
  batch.mask = ref()["tok_mask"];
  batch.student = student->forward(batch.inputs);
  batch.teacher = teacher->forward(batch.inputs);
  // λ = 1: the reference is the gradient term alone (its KL over [B, L, V] is TemperatureKL's business).
  kd::GradientMatching r1(
      kd::GradientMatchingOptions().input_key("embeddings").lambda(kd::Schedule::constant(1.0)));
  auto r = r1->forward(batch);
  EXPECT_LT(max_rel_error(r.total, ref()["tok_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.grad_mse"), ref()["tok_loss"]), 1e-6);
  r.total.backward();
  for (const auto& [name, p] : student->params) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_LT(max_rel_error(p.grad(), ref()["tok_grad_" + name]), 1e-6) << "gradient of " << name;
  }

  // kRaw cannot compare widths 3 and 5: both shapes in the message.
  batch.student = student->forward(batch.inputs);
  batch.teacher = teacher->forward(batch.inputs);
  kd::GradientMatching raw(kd::GradientMatchingOptions().input_key("embeddings").space(kd::GradientSpace::kRaw));
  try {
    raw->forward(batch);
    FAIL() << "kRaw with different widths must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("[2, 4, 3]"));
    EXPECT_THAT(e.what(), HasSubstr("[2, 4, 5]"));
    EXPECT_THAT(e.what(), HasSubstr("kPositionNorm"));
  }
  // A key the models do not provide.
  kd::GradientMatching missing(kd::GradientMatchingOptions().input_key("tok_emb"));
  try {
    missing->forward(batch);
    FAIL() << "a missing extras key must throw";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kModel);
    EXPECT_THAT(e.what(), HasSubstr("tok_emb"));
  }
}

TEST(GradientMatching, LambdaFollowsTheScheduleAndCombinesTheParts) {
  kd::GradientMatching r1;  // default: linear(0.8 -> 0.3), T = 1
  for (double progress : {0.0, 0.5, 1.0}) {
    ImageCase c(progress);
    auto r = r1->forward(c.batch);
    const double lambda = r.parts.at("r1.lambda").item<double>();
    EXPECT_NEAR(lambda, 0.8 - 0.5 * progress, 1e-15);
    const double expected = lambda * r.parts.at("r1.grad_mse").item<double>() +
                            (1 - lambda) * r.parts.at("r1.kl").item<double>();
    EXPECT_NEAR(r.total.item<double>(), expected, 1e-12 * std::abs(expected));
    // KL part is TemperatureKL at T = 1.
    const auto kl = kd::functional::temperature_kl(c.batch.student.logits, c.batch.teacher.logits,
                                                   kd::TemperatureKLOptions().temperature(1.0));
    EXPECT_NEAR(r.parts.at("r1.kl").item<double>(), kl.item<double>(), 1e-12);
  }
  // The same batch can be evaluated twice (the teacher's graph is retained).
  ImageCase c;
  const double a = r1->forward(c.batch).total.item<double>();
  EXPECT_EQ(r1->forward(c.batch).total.item<double>(), a);
}

TEST(GradientMatching, MissingPiecesThrowClearErrors) {
  kd::GradientMatching r1;
  auto expect_error = [&](const kd::DistillBatch& batch, kd::ErrorCategory category, const std::string& piece) {
    try {
      r1->forward(batch);
      ADD_FAILURE() << "expected kd::Error containing " << piece;
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), category) << e.what();
      EXPECT_THAT(e.what(), HasSubstr(piece));
    }
  };
  {
    ImageCase c;
    c.batch.teacher_inputs = torch::Tensor();
    expect_error(c.batch, kd::ErrorCategory::kState, "teacher_inputs");
  }
  {
    ImageCase c;  // inputs that do not require grad
    c.batch.inputs = ref()["img_x"];
    c.batch.student = c.student->forward(c.batch.inputs);
    expect_error(c.batch, kd::ErrorCategory::kState, "requires_grad_(true)");
  }
  {
    ImageCase c;  // teacher run with forward(): no graph to differentiate
    c.batch.teacher = c.teacher->forward(c.batch.teacher_inputs);
    expect_error(c.batch, kd::ErrorCategory::kState, "forward_with_input_grad");
  }
  {
    ImageCase c;  // student computed from another tensor than batch.inputs
    c.batch.student = c.student->forward(ref()["img_x"].clone().requires_grad_(true));
    expect_error(c.batch, kd::ErrorCategory::kState, "not computed from the inputs");
  }
  {
    ImageCase c;
    c.batch.targets = torch::Tensor();
    expect_error(c.batch, kd::ErrorCategory::kValue, "targets");
  }
  {
    ImageCase c;
    c.batch.targets = torch::zeros({5}, torch::kLong);
    expect_error(c.batch, kd::ErrorCategory::kShape, "[3, 4]");
  }
  {
    ImageCase c;  // images of different sizes cannot be compared per element or per position
    auto other = std::make_shared<ImageNetImpl>("img_t_");
    c.batch.teacher_inputs = torch::randn({3, 1, 6, 5}, torch::kFloat64).requires_grad_(true);
    const auto h = torch::tanh(torch::conv2d(c.batch.teacher_inputs, other->params["conv_w"], other->params["conv_b"],
                                             /*stride=*/1, /*padding=*/1));
    c.batch.teacher.logits = torch::linear(h.slice(2, 0, 5).flatten(1), other->params["fc_w"], other->params["fc_b"]);
    expect_error(c.batch, kd::ErrorCategory::kShape, "[3, 1, 6, 5]");
    expect_error(c.batch, kd::ErrorCategory::kShape, "[3, 1, 5, 5]");
  }
  EXPECT_THROW(kd::GradientMatching(kd::GradientMatchingOptions().temperature(0.0)), kd::Error);
  EXPECT_THROW(kd::GradientMatching(kd::GradientMatchingOptions().lambda(kd::Schedule::linear(1.2, 0.3))), kd::Error);
  EXPECT_THROW(kd::functional::gradient_matching({}, {}, {}, {}, {}, -0.5), kd::Error);
}

}  // namespace

TEST(GradientMatching, DeclaresItNeedsInputGradientsThroughTypeErasure) {
  torch::nn::AnyModule any(kd::GradientMatching{});
  EXPECT_TRUE(kd::needs_input_grad(*any.ptr()));
  EXPECT_FALSE(kd::needs_input_grad(*torch::nn::AnyModule(kd::TemperatureKL()).ptr()));
}
