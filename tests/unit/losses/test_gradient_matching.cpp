// GradientMatching (R1) against PyTorch references (tests/parity/gradient_matching.py), errors.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

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
  // dL/d(batch.inputs): through g_s's double backward and the KL.
  ASSERT_TRUE(c.batch.inputs.grad().defined());
  EXPECT_LT(max_rel_error(c.batch.inputs.grad(), ref()["img_grad_x"]), 1e-6);
  // The teacher gets nothing: no parameter gradient, and its input leaf is left alone by the loss's backward.
  for (const auto& p : c.teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(c.batch.teacher_inputs.grad().defined());
}

struct TokenCase {
  std::shared_ptr<TokenNetImpl> student = std::make_shared<TokenNetImpl>("tok_s_");
  std::shared_ptr<TokenNetImpl> teacher = std::make_shared<TokenNetImpl>("tok_t_");
  kd::DistillBatch batch;

  explicit TokenCase(const std::string& mask_key) {
    for (auto& p : teacher->parameters()) p.requires_grad_(false);
    batch.inputs = ref()["tok_tokens"];
    batch.targets = ref()["tok_targets"];
    batch.mask = ref()[mask_key];
    run();
  }
  void run() {
    batch.student = student->forward(batch.inputs);
    batch.teacher = teacher->forward(batch.inputs);
    batch.student.extras["embeddings"].retain_grad();  // a non-leaf: keep its gradient for the check
  }
};

TEST(GradientMatching, TokenCaseComparesPerTokenGradientNormsOfTheEmbeddings) {
  TokenCase c("tok_mask");
  auto& batch = c.batch;
  auto& student = c.student;
  auto& teacher = c.teacher;
  // λ = 1: the gradient term alone (the λ < 1 case below adds the KL).
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
  const auto g_emb = batch.student.extras.at("embeddings").grad();
  ASSERT_TRUE(g_emb.defined());
  EXPECT_LT(max_rel_error(g_emb, ref()["tok_grad_embeddings"]), 1e-6);

  // kRaw cannot compare widths 3 and 5: both shapes in the message.
  c.run();
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

TEST(GradientMatching, TokenCaseBelowLambdaOneLeavesPaddingOutOfEveryPart) {
  // Position [0, 3] is padding by the mask alone (its target is a real class), [1, 3] by both.
  TokenCase c("tok2_mask");
  ASSERT_NE(c.batch.targets[0][3].item<int64_t>(), -100);
  kd::GradientMatching r1(kd::GradientMatchingOptions()
                              .input_key("embeddings")
                              .lambda(kd::Schedule::constant(0.6))
                              .temperature(2.0));
  auto r = r1->forward(c.batch);
  EXPECT_LT(max_rel_error(r.total, ref()["tok2_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.grad_mse"), ref()["tok2_grad_mse"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.kl"), ref()["tok2_kl"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.lambda"), ref()["tok2_lambda"]), 1e-12);
  r.total.backward();
  for (const auto& [name, p] : c.student->params) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_LT(max_rel_error(p.grad(), ref()["tok2_grad_" + name]), 1e-6) << "gradient of " << name;
  }
  const auto g_emb = c.batch.student.extras.at("embeddings").grad();
  ASSERT_TRUE(g_emb.defined());
  EXPECT_LT(max_rel_error(g_emb, ref()["tok2_grad_embeddings"]), 1e-6);

  // What padding holds does not matter: NaN logits at both padded positions give the same loss.
  TokenCase nan_pad("tok2_mask");
  auto& zs = nan_pad.batch.student.logits;
  zs = zs.clone();
  zs.select(1, 3).fill_(NAN);  // [b, 3, :] for both examples
  nan_pad.batch.teacher.logits = nan_pad.batch.teacher.logits.clone();
  nan_pad.batch.teacher.logits.select(1, 3).fill_(NAN);
  kd::GradientMatching kl_only(
      kd::GradientMatchingOptions().input_key("embeddings").lambda(kd::Schedule::constant(0.0)).temperature(2.0));
  EXPECT_LT(max_rel_error(kl_only->forward(nan_pad.batch).total, ref()["tok2_kl"]), 1e-6);
}

// The scale-free distance: 1 − cos per example, against the PyTorch reference written with vector norms.
TEST(GradientMatching, CosineDistanceMatchesPyTorchOnImagesAndMaskedTokens) {
  ImageCase c;
  kd::GradientMatching r1(
      kd::GradientMatchingOptions().temperature(2.0).distance(kd::GradientDistance::kCosine));  // default λ schedule
  auto r = r1->forward(c.batch);
  EXPECT_LT(max_rel_error(r.total, ref()["imgcos_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(r.parts.at("r1.grad_cosine"), ref()["imgcos_distance"]), 1e-6);
  EXPECT_EQ(r.parts.count("r1.grad_mse"), 0u);
  EXPECT_LT(max_rel_error(r.parts.at("r1.grad_share"), ref()["imgcos_share"]), 1e-6);
  r.total.backward();
  for (const auto& [name, p] : c.student->params) {
    EXPECT_LT(max_rel_error(p.grad(), ref()["imgcos_grad_" + name]), 1e-6) << "gradient of " << name;
  }
  EXPECT_LT(max_rel_error(c.batch.inputs.grad(), ref()["imgcos_grad_x"]), 1e-6);

  TokenCase t("tok2_mask");
  kd::GradientMatching tok(kd::GradientMatchingOptions()
                               .input_key("embeddings")
                               .lambda(kd::Schedule::constant(0.6))
                               .temperature(2.0)
                               .distance(kd::GradientDistance::kCosine));
  auto rt = tok->forward(t.batch);
  EXPECT_LT(max_rel_error(rt.total, ref()["tok2cos_loss"]), 1e-6);
  EXPECT_LT(max_rel_error(rt.parts.at("r1.grad_cosine"), ref()["tok2cos_distance"]), 1e-6);
  rt.total.backward();
  for (const auto& [name, p] : t.student->params) {
    EXPECT_LT(max_rel_error(p.grad(), ref()["tok2cos_grad_" + name]), 1e-6) << "gradient of " << name;
  }
  // Padding in the middle ([0, 1]) has a non-zero gradient (its embedding feeds the later positions): it is left
  // out of the distance.
  TokenCase mid("tok3_mask");
  kd::GradientMatching grad_only(kd::GradientMatchingOptions()
                                     .input_key("embeddings")
                                     .lambda(kd::Schedule::constant(1.0))
                                     .distance(kd::GradientDistance::kCosine));
  EXPECT_LT(max_rel_error(grad_only->forward(mid.batch).total, ref()["tok3cos_distance"]), 1e-6);
  // A distance between directions: in [0, 2].
  EXPECT_GE(r.parts.at("r1.grad_cosine").item<double>(), 0.0);
  EXPECT_LE(r.parts.at("r1.grad_cosine").item<double>(), 2.0);
}

// NaN in the inputs or the logits comes back as a non-finite loss or non-finite gradients, as in PyTorch:
// the trainer's non-finite policy decides what the step becomes (test_nonfinite_policy.cpp).
TEST(GradientMatching, NonFiniteInputsGiveNonFiniteValuesNotErrors) {
  kd::GradientMatching r1(kd::GradientMatchingOptions().temperature(2.0));
  {
    ImageCase c;  // one pixel of the student's images is NaN
    auto x = ref()["img_x"].clone();
    x[1][0][2][3] = NAN;
    c.batch.inputs = x.requires_grad_(true);
    c.batch.student = c.student->forward(c.batch.inputs);
    EXPECT_FALSE(std::isfinite(r1->forward(c.batch).total.item<double>()));
  }
  {
    ImageCase c;  // finite inputs, but the student model emits NaN for one counted example
    auto z = c.batch.student.logits.clone();
    z[2][1] = NAN;
    c.batch.student.logits = z;
    EXPECT_FALSE(std::isfinite(r1->forward(c.batch).total.item<double>()));
  }
}

TEST(GradientMatching, BadTargetsThrowKdErrors) {
  kd::GradientMatching r1(kd::GradientMatchingOptions().temperature(2.0));
  auto expect_error = [](auto&& fn, kd::ErrorCategory category, std::vector<std::string> pieces) {
    try {
      fn();
      ADD_FAILURE() << "expected kd::Error containing " << pieces[0];
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), category) << e.what();
      for (const auto& p : pieces) EXPECT_THAT(e.what(), HasSubstr(p));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "expected kd::Error, got " << e.what();
    }
  };
  {
    ImageCase c;  // 4 classes: target 7 is out of range
    c.batch.targets = torch::tensor({0, 7, 1}, torch::kLong);
    expect_error([&] { r1->forward(c.batch); }, kd::ErrorCategory::kValue, {"[0, 7]", "[0, 3]", "[3, 4]"});
    c.batch.targets = torch::tensor({0, -2, 1}, torch::kLong);
    expect_error([&] { r1->forward(c.batch); }, kd::ErrorCategory::kValue, {"[-2, 1]", "ignore_index"});
    c.batch.targets = torch::tensor({0.0, 1.0, 1.0}, torch::kFloat64);
    expect_error([&] { r1->forward(c.batch); }, kd::ErrorCategory::kValue, {"integer class indices"});
    // ignore_index itself is fine: that example drops out of the task loss and the KL.
    c.batch.targets = torch::tensor({0, -100, 1}, torch::kLong);
    EXPECT_TRUE(std::isfinite(r1->forward(c.batch).total.item<double>()));
  }
  EXPECT_THROW(kd::functional::gradient_matching({}, {}, {}, {}, {}, 0.5, kd::GradientMatchingOptions().temperature(0)),
               kd::Error);
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
