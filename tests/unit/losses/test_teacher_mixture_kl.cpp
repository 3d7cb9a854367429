// TeacherMixtureKL against its formula in PyTorch (tests/parity/teacher_mixture_kl.py): value, parts and the
// gradients for the student's logits and the mixture logits θ; the learned weights move toward the teacher
// that explains the labels; bad input names what is wrong.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "reference.h"

namespace {

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("teacher_mixture_kl.py") + "/teacher_mixture_kl.json");
  return r;
}

// Relative to the reference's largest magnitude (entries near zero are judged on that scale).
void expect_close(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  const double scale = b.abs().max().item<double>();
  EXPECT_LE((a - b).abs().max().item<double>(), 1e-9 * std::max(scale, 1e-300)) << what;
}

kd::DistillBatch batch_of(const torch::Tensor& zs, const torch::Tensor& zk, const torch::Tensor& y) {
  kd::DistillBatch b;
  b.student.logits = zs;
  for (int64_t k = 0; k < zk.size(0); ++k) b.teacher.extras["teacher" + std::to_string(k) + ".logits"] = zk[k];
  b.targets = y;
  return b;
}

}  // namespace

TEST(TeacherMixtureKL, MatchesItsFormulaInPyTorchValueAndGradients) {
  const auto& r = ref();
  kd::TeacherMixtureKL loss(kd::TeacherMixtureKLOptions(3).temperature(r.scalar("T")).label_weight(r.scalar("lam")));
  loss->to(torch::kFloat64);
  ASSERT_EQ(loss->theta.scalar_type(), torch::kFloat64);
  {
    torch::NoGradGuard g;
    loss->theta.copy_(r["theta"]);
  }
  auto zs = r["zs"].clone().requires_grad_(true);
  const auto out = loss->forward(batch_of(zs, r["zk"], r["y"]));
  out.total.backward();
  expect_close(out.total.detach(), r["loss"], "loss");
  expect_close(out.parts.at("kl"), r["kl"], "kl");
  expect_close(out.parts.at("mixture_ce"), r["ce"], "mixture_ce");
  for (int64_t k = 0; k < 3; ++k) expect_close(out.parts.at("w.teacher" + std::to_string(k)), r["w"][k], "weight");
  expect_close(zs.grad(), r["grad_zs"], "d/d student logits");
  expect_close(loss->theta.grad(), r["grad_theta"], "d/d theta");
}

TEST(TeacherMixtureKL, LearnsToWeightTheTeacherThatExplainsTheLabels) {
  // Teacher 0 predicts the labels (logit 4 on the true class), teacher 1 is noise.
  torch::manual_seed(2);
  const int64_t B = 64, C = 4;
  const auto y = torch::randint(0, C, {B});
  auto zk = torch::stack({4 * torch::one_hot(y, C).to(torch::kFloat), torch::randn({B, C}) * 2});
  kd::TeacherMixtureKL loss(kd::TeacherMixtureKLOptions(2).temperature(2));
  torch::optim::SGD opt(loss->parameters(), torch::optim::SGDOptions(0.5));
  double previous = 0.5;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    const auto r = loss->forward(batch_of(torch::zeros({B, C}), zk, y));
    r.total.backward();
    opt.step();
    const double w0 = loss->weights()[0].item<double>();
    EXPECT_GT(w0, previous) << "step " << step;
    previous = w0;
  }
  EXPECT_GT(previous, 0.9);
}

TEST(TeacherMixtureKL, FromTheRegistryAndBadInput) {
  auto any = kd::LossRegistry::global().create(kd::LossSpec("teacher_mixture_kl").set("teachers", 2.0));
  kd::TeacherMixtureKL loss(kd::TeacherMixtureKLOptions(2));
  const auto y = torch::tensor({0, 1});
  auto b = batch_of(torch::zeros({2, 3}), torch::zeros({1, 2, 3}), y);  // only teacher0
  try {
    loss->forward(b);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no 'teacher1.logits'"), std::string::npos) << e.what();
  }
  b = batch_of(torch::zeros({2, 3}), torch::zeros({2, 2, 4}), y);
  try {
    loss->forward(b);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 4] but the student's logits are [2, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kd::TeacherMixtureKL(kd::TeacherMixtureKLOptions(0)), kd::Error);
  EXPECT_THROW(kd::TeacherMixtureKL(kd::TeacherMixtureKLOptions(2).initial_weights({1.0})), kd::Error);
}
