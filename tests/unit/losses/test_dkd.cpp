// DKD and logit standardization against references written from the papers' formulas
// (tests/parity/dkd.py), the KD = TCKD + (1 − p_t,g)·NCKD identity, the warm-up ramp, the module's
// batch handling (mask, ignore_index, registry), and bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/dkd.h"
#include "kd/losses/registry.h"
#include "kd/losses/temperature_kl.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("dkd.py") + "/dkd.json");
  return r;
}

kd::DKDOptions options_of(const std::string& c) {
  return kd::DKDOptions()
      .temperature(ref().scalar(c + "_T"))
      .alpha(ref().scalar(c + "_alpha"))
      .beta(ref().scalar(c + "_beta"));
}

kd::DistillBatch batch_of(const torch::Tensor& zs, const torch::Tensor& zt, const torch::Tensor& targets) {
  kd::DistillBatch b;
  b.student.logits = zs;
  b.teacher.logits = zt;
  b.targets = targets;
  return b;
}

void expect_case(const std::string& c, const torch::Tensor& targets, const torch::Tensor& mask, bool standardize) {
  SCOPED_TRACE(c);
  auto s = ref()[c + "_zs"].clone().requires_grad_(true);
  auto batch = batch_of(s, ref()[c + "_zt"], targets);
  batch.mask = mask;
  kd::DKD dkd(options_of(c).standardize(standardize));
  const auto r = dkd->forward(batch);
  const double alpha = ref().scalar(c + "_alpha"), beta = ref().scalar(c + "_beta");
  EXPECT_LT(max_rel_error(r.parts.at("tckd"), ref()[c + "_tckd"] * alpha), 1e-9);
  EXPECT_LT(max_rel_error(r.parts.at("nckd"), ref()[c + "_nckd"] * beta), 1e-9);
  EXPECT_LT(max_rel_error(r.total, ref()[c + "_loss"]), 1e-9);
  r.total.backward();
  EXPECT_LT(max_rel_error(s.grad(), ref()[c + "_gs"]), 1e-9);
}

TEST(DKD, ClassifierLogitsMatchThePaperFormula) { expect_case("bc", ref()["bc_targets"], {}, false); }

TEST(DKD, MaskedSequenceLogitsWithIgnoreIndexMatchThePaperFormula) {
  expect_case("seq", ref()["seq_targets"], ref()["seq_mask"], false);
}

TEST(DKD, StandardizedLogitsMatchTheLogitStandardizationPaper) {
  expect_case("std", ref()["bc_targets"], {}, true);
}

TEST(DKD, ConfidentTeacherStaysFiniteAndExact) { expect_case("big", ref()["bc_targets"], {}, false); }

TEST(DKD, HintonKDIsTCKDPlusOneMinusTeacherTargetProbabilityTimesNCKDPerRow) {
  // Row by row (each row its own batch of one), the decomposition of the paper's eq. 4.
  const auto zs = ref()["bc_zs"], zt = ref()["bc_zt"], g = ref()["bc_targets"];
  for (int64_t i = 0; i < zs.size(0); ++i) {
    const auto t = kd::functional::dkd_terms(zs.slice(0, i, i + 1), zt.slice(0, i, i + 1), g.slice(0, i, i + 1), {}, 4.0);
    const double kd_row = ref()["bc_kd_rows"][i].item<double>();
    const double w = ref()["bc_one_minus_ptg"][i].item<double>();
    EXPECT_NEAR(t.tckd.item<double>() + w * t.nckd.item<double>(), kd_row, 1e-9 * std::max(1.0, kd_row)) << "row " << i;
  }
}

TEST(DKD, IdenticalLogitsGiveZero) {
  const auto z = torch::randn({4, 6}, torch::kDouble);
  const auto t = kd::functional::dkd_terms(z, z, torch::tensor({0, 5, 2, 2}), {}, 3.0);
  EXPECT_NEAR(t.tckd.item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(t.nckd.item<double>(), 0.0, 1e-12);
}

TEST(DKD, WarmupRampsInByFractionOrBySteps) {
  kd::DKD frac(kd::DKDOptions().warmup(0.5));
  kd::DKD steps(kd::DKDOptions().warmup(10));
  kd::DKD none{kd::DKDOptions()};
  kd::StepInfo at;
  at.stage_steps = 100;
  at.stage_step = 5;
  at.progress = 0.05;
  EXPECT_DOUBLE_EQ(frac->ramp(at), 0.1);
  EXPECT_DOUBLE_EQ(steps->ramp(at), 0.5);
  EXPECT_DOUBLE_EQ(none->ramp(at), 1.0);
  at.stage_step = 80;
  at.progress = 0.8;
  EXPECT_DOUBLE_EQ(frac->ramp(at), 1.0);
  EXPECT_DOUBLE_EQ(steps->ramp(at), 1.0);
  // The ramp scales the whole loss and both parts.
  auto batch = batch_of(ref()["bc_zs"], ref()["bc_zt"], ref()["bc_targets"]);
  batch.step.stage_steps = 100;
  batch.step.progress = 0.125;
  kd::DKD ramped(options_of("bc").warmup(0.5));
  const auto r = ramped->forward(batch);
  EXPECT_NEAR(r.total.item<double>(), 0.25 * ref().scalar("bc_loss"), 1e-9);
  EXPECT_NEAR(r.parts.at("dkd.ramp").item<double>(), 0.25, 1e-12);
}

TEST(TemperatureKL, StandardizeZScoresBothLogitsAsTheLogitStandardizationPaper) {
  EXPECT_LT(max_rel_error(kd::functional::standardize_logits(ref()["bc_zs"]), ref()["std_z"]), 1e-9);
  auto s = ref()["bc_zs"].clone().requires_grad_(true);
  kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(2.0).standardize(true));
  const auto r = kl->forward(batch_of(s, ref()["bc_zt"], ref()["bc_targets"]));
  EXPECT_LT(max_rel_error(r.total, ref()["std_kl_loss"]), 1e-9);
  r.total.backward();
  EXPECT_LT(max_rel_error(s.grad(), ref()["std_kl_gs"]), 1e-9);
  // Invariant to each model's logit scale and shift (up to the 1e-7 added to the std), which plain KL is not.
  const auto shifted = batch_of(ref()["bc_zs"] * 3 + 1, ref()["bc_zt"] * 0.5 - 2, ref()["bc_targets"]);
  EXPECT_NEAR(kl->forward(shifted).total.item<double>(), ref().scalar("std_kl_loss"), 1e-6);
  kd::TemperatureKL plain(kd::TemperatureKLOptions().temperature(2.0));
  EXPECT_GT(std::abs(plain->forward(shifted).total.item<double>() -
                     plain->forward(batch_of(ref()["bc_zs"], ref()["bc_zt"], ref()["bc_targets"])).total.item<double>()),
            0.1);
}

TEST(DKD, RegistryBuildsItFromAConfigSpecAndTemperatureKLTakesStandardize) {
  auto loss = kd::LossRegistry::global().create(kd::LossSpec("dkd").set("alpha", 1.0).set("beta", 8.0).set("temperature", 4.0));
  const auto r = loss.forward(batch_of(ref()["bc_zs"], ref()["bc_zt"], ref()["bc_targets"]));
  EXPECT_LT(max_rel_error(r.total, ref()["bc_loss"]), 1e-9);
  auto kl = kd::LossRegistry::global().create(
      kd::LossSpec("temperature_kl").set("temperature", 2.0).set("standardize", true));
  EXPECT_LT(max_rel_error(kl.forward(batch_of(ref()["bc_zs"], ref()["bc_zt"], ref()["bc_targets"])).total,
                          ref()["std_kl_loss"]),
            1e-9);
}

TEST(DKD, BadOptionsAndInputsThrowClearErrors) {
  using kd::ErrorCategory;
  using kd::testing::expect_kd_error;
  expect_kd_error([] { kd::DKD(kd::DKDOptions().beta(-1)); }, ErrorCategory::kValue, {"beta -1"});
  expect_kd_error([] { kd::DKD(kd::DKDOptions().temperature(0)); }, ErrorCategory::kValue, {"temperature 0"});
  const auto z = torch::randn({3, 4});
  kd::DKD dkd;
  expect_kd_error([&] { dkd->forward(batch_of(z, z, torch::Tensor())); }, ErrorCategory::kShape, {"needs batch.targets"});
  expect_kd_error([&] { dkd->forward(batch_of(z, torch::randn({3, 5}), torch::tensor({0, 1, 2}))); },
                  ErrorCategory::kShape, {"[3, 4]", "[3, 5]"});
  expect_kd_error([&] { dkd->forward(batch_of(z, z, torch::tensor({0, 4, 1}))); }, ErrorCategory::kValue,
                  {"[0, 4]", "[0, 3]"});
  expect_kd_error([&] { dkd->forward(batch_of(z, z, torch::rand({3}))); }, ErrorCategory::kValue, {"integer"});
  kd::DistillBatch topk = batch_of(z, torch::Tensor(), torch::tensor({0, 1, 2}));
  expect_kd_error([&] { dkd->forward(topk); }, ErrorCategory::kModel, {"full logits", "top_k 0"});
  kd::TemperatureKL kl(kd::TemperatureKLOptions().standardize(true));
  topk.teacher.extras["topk_logits"] = torch::randn({3, 2});
  topk.teacher.extras["topk_indices"] = torch::tensor({{0, 1}, {1, 2}, {2, 3}});
  expect_kd_error([&] { kl->forward(topk); }, ErrorCategory::kModel, {"standardize", "top_k 0"});
}

}  // namespace
