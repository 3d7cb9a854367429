// TemperatureKL against PyTorch references (tests/parity/temperature_kl.py), closed forms,
// invariants (zero, non-negativity, JSD symmetry, chunked == unchunked, top-k with k = V is
// dense), the module's batch handling, and bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "kd/core/error.h"
#include "kd/losses/temperature_kl.h"
#include "reference.h"

namespace {

using kd::testing::max_rel_error;
using ::testing::HasSubstr;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("temperature_kl.py") + "/temperature_kl.json");
  return r;
}

struct Mode {
  std::string name;
  kd::KLMode mode;
  double beta;
};

const std::vector<Mode>& modes() {
  static const std::vector<Mode> m{{"fwd", kd::KLMode::kForward, 0.5}, {"rev", kd::KLMode::kReverse, 0.5},
                                   {"jsd50", kd::KLMode::kJSD, 0.5},   {"jsd30", kd::KLMode::kJSD, 0.3},
                                   {"jsd0", kd::KLMode::kJSD, 0.0},    {"jsd100", kd::KLMode::kJSD, 1.0}};
  return m;
}

kd::TemperatureKLOptions options_for(const Mode& m, double T, int64_t chunk) {
  return kd::TemperatureKLOptions().temperature(T).mode(m.mode).beta(m.beta).chunk_size(chunk);
}

// Runs `loss_of(student, teacher)` on fresh leaves and compares the value and the gradients with
// the reference: once with a frozen teacher (student gradient only, as in distillation) and once
// with a teacher that requires grad too (both gradients; a different backward path).
template <typename Fn>
void expect_matches(const std::string& prefix, const torch::Tensor& zs, const torch::Tensor& zt, Fn loss_of) {
  for (bool teacher_grad : {false, true}) {
    SCOPED_TRACE(teacher_grad ? "teacher requires grad" : "frozen teacher");
    auto s = zs.clone().requires_grad_(true);
    auto t = zt.clone().requires_grad_(teacher_grad);
    torch::Tensor loss = loss_of(s, t);
    EXPECT_LT(max_rel_error(loss, ref()[prefix + "_loss"]), 1e-6) << prefix << " value " << loss.item<double>();
    loss.backward();
    ASSERT_TRUE(s.grad().defined()) << prefix;
    EXPECT_LT(max_rel_error(s.grad(), ref()[prefix + "_gs"]), 1e-6) << prefix << " student gradient";
    if (teacher_grad) {
      ASSERT_TRUE(t.grad().defined()) << prefix;
      EXPECT_LT(max_rel_error(t.grad(), ref()[prefix + "_gt"]), 1e-6) << prefix << " teacher gradient";
    }
  }
}

TEST(TemperatureKL, ClassifierLogitsMatchPyTorchForEachMode) {
  const double T = ref().scalar("bc_T");
  for (const auto& m : modes()) {
    for (int64_t chunk : {0, 2}) {
      SCOPED_TRACE(m.name + " chunk " + std::to_string(chunk));
      expect_matches("bc_" + m.name, ref()["bc_zs"], ref()["bc_zt"], [&](const auto& s, const auto& t) {
        return kd::functional::temperature_kl(s, t, options_for(m, T, chunk));
      });
    }
  }
}

TEST(TemperatureKL, MaskedSequenceLogitsWithIgnoreIndexMatchPyTorch) {
  const double T = ref().scalar("seq_T");
  for (const auto& m : modes()) {
    for (int64_t chunk : {0, 1, 5}) {
      SCOPED_TRACE(m.name + " chunk " + std::to_string(chunk));
      // Through the module: batch.mask [B, L] and batch.targets with -100.
      expect_matches("seq_" + m.name, ref()["seq_zs"], ref()["seq_zt"], [&](const auto& s, const auto& t) {
        kd::DistillBatch batch;
        batch.student.logits = s;
        batch.teacher.logits = t;
        batch.mask = ref()["seq_mask"];
        batch.targets = ref()["seq_targets"];
        kd::TemperatureKL kl(options_for(m, T, chunk));
        auto r = kl->forward(batch);
        EXPECT_EQ(r.parts.at("kl").item<double>(), r.total.item<double>());
        EXPECT_EQ(r.parts.at("kl.temperature").item<double>(), T);
        return r.total;
      });
    }
  }
  // The functional form with the counted rows given explicitly agrees.
  const auto rows = (ref()["seq_mask"] != 0) & (ref()["seq_targets"] != -100);
  const auto l =
      kd::functional::temperature_kl(ref()["seq_zs"], ref()["seq_zt"], rows, kd::TemperatureKLOptions().temperature(T));
  EXPECT_LT(max_rel_error(l, ref()["seq_fwd_loss"]), 1e-6);
}

TEST(TemperatureKL, SparseTopKTeacherMatchesThePythonRule) {
  const double T = ref().scalar("topk_T");
  const auto rows = (ref()["seq_mask"] != 0) & (ref()["seq_targets"] != -100);
  for (const auto& m : modes()) {
    for (int64_t chunk : {0, 3}) {
      SCOPED_TRACE(m.name + " chunk " + std::to_string(chunk));
      // The functional overload.
      expect_matches("topk_" + m.name, ref()["seq_zs"], ref()["topk_values"], [&](const auto& s, const auto& v) {
        return kd::functional::temperature_kl_topk(s, v, ref()["topk_indices"], rows, options_for(m, T, chunk));
      });
      // The module, from the teacher's extras (int32 indices, as a TeacherCache stores them).
      expect_matches("topk_" + m.name, ref()["seq_zs"], ref()["topk_values"], [&](const auto& s, const auto& v) {
        kd::DistillBatch batch;
        batch.student.logits = s;
        batch.teacher.extras["topk_logits"] = v;
        batch.teacher.extras["topk_indices"] = ref()["topk_indices"].to(torch::kInt32);
        batch.mask = ref()["seq_mask"];
        batch.targets = ref()["seq_targets"];
        kd::TemperatureKL kl(options_for(m, T, chunk));
        return kl->forward(batch).total;
      });
    }
  }
}

TEST(TemperatureKL, TopKWithAllClassesIsTheDenseLoss) {
  torch::manual_seed(1);
  const auto zs = torch::randn({4, 6, 9}, torch::kFloat64) * 2;
  const auto zt = torch::randn({4, 6, 9}, torch::kFloat64) * 2;
  const auto topk = zt.topk(9, -1);
  const auto values = std::get<0>(topk), indices = std::get<1>(topk);  // every class, sorted by value: a permutation
  for (const auto& m : modes()) {
    SCOPED_TRACE(m.name);
    const auto o = options_for(m, 1.3, 7);
    auto s1 = zs.clone().requires_grad_(true), s2 = zs.clone().requires_grad_(true);
    auto dense = kd::functional::temperature_kl(s1, zt, o);
    auto sparse = kd::functional::temperature_kl_topk(s2, values, indices, {}, o);
    EXPECT_LT(max_rel_error(sparse, dense), 1e-12);
    dense.backward();
    sparse.backward();
    EXPECT_LT(max_rel_error(s2.grad(), s1.grad()), 1e-12);
  }
}

// Two classes, student uniform: KL(p_t ‖ p_s)·T² in closed form.
TEST(TemperatureKL, TemperatureSquaredFactorMatchesTheClosedForm) {
  const double a = 3.0;
  for (double T : {0.5, 1.0, 2.0, 4.0}) {
    const double p = 1.0 / (1.0 + std::exp(-a / T));  // softmax([a, 0] / T)[0]
    const double kl = p * std::log(2 * p) + (1 - p) * std::log(2 * (1 - p));
    const auto zs = torch::zeros({1, 2}, torch::kFloat64);
    const auto zt = torch::tensor({a, 0.0}, torch::kFloat64).reshape({1, 2});
    const double got = kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(T)).item<double>();
    EXPECT_NEAR(got, T * T * kl, 1e-12 * T * T * kl) << "T = " << T;
    // Reverse KL(p_s ‖ p_t) with p_s = (1/2, 1/2).
    const double rkl = 0.5 * std::log(0.5 / p) + 0.5 * std::log(0.5 / (1 - p));
    const double got_r =
        kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(T).mode(kd::KLMode::kReverse))
            .item<double>();
    EXPECT_NEAR(got_r, T * T * rkl, 1e-12 * T * T * rkl) << "T = " << T;
  }
  // The batchmean: two identical rows give the value of one.
  const auto zs = torch::zeros({2, 2}, torch::kFloat64);
  const auto zt = torch::tensor({a, 0.0, a, 0.0}, torch::kFloat64).reshape({2, 2});
  const auto one = kd::functional::temperature_kl(zs.narrow(0, 0, 1), zt.narrow(0, 0, 1), {});
  EXPECT_NEAR(kd::functional::temperature_kl(zs, zt, {}).item<double>(), one.item<double>(), 1e-15);
}

TEST(TemperatureKL, ForwardKLGradientIsSoftmaxDifferenceTimesTOverN) {
  torch::manual_seed(2);
  const double T = 2.0;
  auto zs = torch::randn({3, 5}, torch::kFloat64).requires_grad_(true);
  const auto zt = torch::randn({3, 5}, torch::kFloat64);
  kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(T)).backward();
  // Softmax written out by hand: exp(x − max) / Σ exp(x − max).
  auto softmax = [](const torch::Tensor& x) {
    auto e = (x - std::get<0>(x.max(-1, true))).exp();
    return e / e.sum(-1, true);
  };
  const auto expected = (softmax(zs.detach() / T) - softmax(zt / T)) * T / 3.0;
  EXPECT_LT(max_rel_error(zs.grad(), expected), 1e-12);
}

TEST(TemperatureKL, IdenticalLogitsGiveZeroAndRandomLogitsAreNonNegative) {
  torch::manual_seed(3);
  const auto z = torch::randn({4, 7, 13}, torch::kFloat64) * 3;
  for (const auto& m : modes()) {
    SCOPED_TRACE(m.name);
    auto s = z.clone().requires_grad_(true);
    auto l = kd::functional::temperature_kl(s, z, options_for(m, 2.0, 5));
    EXPECT_NEAR(l.item<double>(), 0.0, 1e-14);
    l.backward();
    EXPECT_LT(s.grad().abs().max().item<double>(), 1e-14);
    for (int i = 0; i < 5; ++i) {
      const auto a = torch::randn({4, 7, 13}, torch::kFloat64) * 4, b = torch::randn({4, 7, 13}, torch::kFloat64);
      EXPECT_GE(kd::functional::temperature_kl(a, b, options_for(m, 0.7, 3)).item<double>(), 0.0);
    }
  }
  // Sparse forward KL over the kept support is ≥ 0 too (the student's gathered mass is ≤ 1).
  const auto a = torch::randn({4, 7, 13}, torch::kFloat64), b = torch::randn({4, 7, 13}, torch::kFloat64);
  const auto topk = b.topk(3, -1);
  const auto v = std::get<0>(topk), i = std::get<1>(topk);
  EXPECT_GE(kd::functional::temperature_kl_topk(a, v, i).item<double>(), 0.0);
}

TEST(TemperatureKL, JSDAtHalfIsSymmetric) {
  torch::manual_seed(4);
  const auto a = torch::randn({6, 10}, torch::kFloat64) * 2, b = torch::randn({6, 10}, torch::kFloat64) * 2;
  const auto o = kd::TemperatureKLOptions().temperature(1.5).mode(kd::KLMode::kJSD).beta(0.5);
  const double ab = kd::functional::temperature_kl(a, b, o).item<double>();
  const double ba = kd::functional::temperature_kl(b, a, o).item<double>();
  EXPECT_NEAR(ab, ba, 1e-14);
  EXPECT_GT(ab, 0.0);
  // And β ↔ 1 − β swaps the roles in general.
  const double ab3 = kd::functional::temperature_kl(a, b, kd::TemperatureKLOptions(o).beta(0.3)).item<double>();
  const double ba7 = kd::functional::temperature_kl(b, a, kd::TemperatureKLOptions(o).beta(0.7)).item<double>();
  EXPECT_NEAR(ab3, ba7, 1e-14);
}

TEST(TemperatureKL, ChunkedEqualsUnchunkedInValuesAndGradients) {
  torch::manual_seed(5);
  const auto zs = torch::randn({3, 17, 23}, torch::kFloat64) * 2;
  const auto zt = torch::randn({3, 17, 23}, torch::kFloat64) * 2;
  const auto rows = torch::rand({3, 17}) > 0.3;
  const auto topk = zt.topk(5, -1);
  const auto v = std::get<0>(topk), i = std::get<1>(topk);
  for (const auto& m : modes()) {
    for (bool sparse : {false, true}) {
      for (bool masked : {false, true}) {
        SCOPED_TRACE(m.name + (sparse ? " sparse" : " dense") + (masked ? " masked" : ""));
        auto run = [&](int64_t chunk, bool teacher_grad) {
          auto s = zs.clone().requires_grad_(true);
          auto t = (sparse ? v : zt).clone().requires_grad_(teacher_grad);
          const auto o = options_for(m, 1.9, chunk);
          const auto mask = masked ? rows : torch::Tensor();
          auto l = sparse ? kd::functional::temperature_kl_topk(s, t, i, mask, o)
                          : kd::functional::temperature_kl(s, t, mask, o);
          l.backward();
          return std::make_tuple(l.detach(), s.grad(), t.grad());
        };
        const auto [l0, gs0, gt0] = run(0, true);
        for (int64_t chunk : {1, 4, 16, 51, 1000}) {
          const auto [l, gs, gt] = run(chunk, true);
          EXPECT_LT(max_rel_error(l, l0), 1e-13) << chunk;
          EXPECT_LT(max_rel_error(gs, gs0), 1e-13) << chunk;
          EXPECT_LT(max_rel_error(gt, gt0), 1e-13) << chunk;
          // With a frozen teacher (the lean path for forward KL) the student's side is the same.
          const auto [lf, gsf, gtf] = run(chunk, false);
          EXPECT_LT(max_rel_error(lf, l0), 1e-13) << chunk;
          EXPECT_LT(max_rel_error(gsf, gs0), 1e-13) << chunk;
          EXPECT_FALSE(gtf.defined());
        }
      }
    }
  }
}

TEST(TemperatureKL, MasksOutRowsAndDividesByTheirCount) {
  torch::manual_seed(6);
  const auto zs = torch::randn({2, 5, 4}, torch::kFloat64), zt = torch::randn({2, 5, 4}, torch::kFloat64);
  const auto o = kd::TemperatureKLOptions().temperature(1.0);
  // A [B] mask on [B, L, V] drops whole sequences: the loss is the kept sequence's own.
  kd::DistillBatch batch;
  batch.student.logits = zs;
  batch.teacher.logits = zt;
  batch.mask = torch::tensor({0.0, 1.0}, torch::kFloat64);
  kd::TemperatureKL kl(o);
  const auto second = kd::functional::temperature_kl(zs[1], zt[1], o);
  EXPECT_NEAR(kl->forward(batch).total.item<double>(), second.item<double>(), 1e-14);
  // Nothing counted: 0, with a zero gradient.
  auto s = zs.clone().requires_grad_(true);
  auto none = kd::functional::temperature_kl(s, zt, torch::zeros({2, 5}), o);
  EXPECT_EQ(none.item<double>(), 0.0);
  none.backward();
  EXPECT_EQ(s.grad().abs().max().item<double>(), 0.0);
  // Masked-out rows never enter the computation: NaN there changes nothing.
  auto poisoned = zs.clone();
  poisoned[0][2].fill_(std::nan(""));
  auto rows = torch::ones({2, 5}, torch::kBool);
  rows[0][2] = false;
  auto p = poisoned.clone().requires_grad_(true);
  auto lp = kd::functional::temperature_kl(p, zt, rows, o);
  EXPECT_TRUE(std::isfinite(lp.item<double>()));
  lp.backward();
  EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
  // A [B, L] input mask on a pooled classifier's [B, C] logits is not about the logits' rows.
  kd::DistillBatch cls;
  cls.student.logits = zs[0];
  cls.teacher.logits = zt[0];
  cls.mask = torch::tensor({{1, 1, 0}, {1, 1, 1}, {1, 0, 0}, {1, 1, 1}, {1, 1, 1}});  // [5, 3] for [5, 4]
  EXPECT_NEAR(kl->forward(cls).total.item<double>(), kd::functional::temperature_kl(zs[0], zt[0], o).item<double>(),
              1e-15);
  // ignore_index = nullopt leaves the targets alone.
  kd::DistillBatch tgt;
  tgt.student.logits = zs;
  tgt.teacher.logits = zt;
  tgt.targets = torch::full({2, 5}, -100, torch::kLong);
  EXPECT_EQ(kl->forward(tgt).total.item<double>(), 0.0);
  kd::TemperatureKL no_ignore(kd::TemperatureKLOptions(o).ignore_index(std::nullopt));
  EXPECT_NEAR(no_ignore->forward(tgt).total.item<double>(), kd::functional::temperature_kl(zs, zt, o).item<double>(),
              1e-14);
}

TEST(TemperatureKL, TemperatureFollowsTheScheduleAtTheBatchProgress) {
  torch::manual_seed(7);
  const auto zs = torch::randn({4, 6}, torch::kFloat64), zt = torch::randn({4, 6}, torch::kFloat64);
  kd::TemperatureKL kl(
      kd::TemperatureKLOptions().temperature(100.0).temperature_schedule(kd::Schedule::linear(4.0, 1.0)));
  for (double progress : {0.0, 0.25, 1.0}) {
    kd::DistillBatch batch;
    batch.student.logits = zs;
    batch.teacher.logits = zt;
    batch.step.progress = progress;
    const auto r = kl->forward(batch);
    const double T = 4.0 - 3.0 * progress;
    EXPECT_DOUBLE_EQ(r.parts.at("kl.temperature").item<double>(), T);
    EXPECT_EQ(kl->temperature_at(progress), T);
    EXPECT_NEAR(r.total.item<double>(),
                kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(T)).item<double>(),
                1e-14);
  }
  // Without a schedule the constant T is reported.
  kd::TemperatureKL constant(kd::TemperatureKLOptions().temperature(3.0));
  kd::DistillBatch batch;
  batch.student.logits = zs;
  batch.teacher.logits = zt;
  batch.step.progress = 0.9;
  EXPECT_EQ(constant->forward(batch).parts.at("kl.temperature").item<double>(), 3.0);
}

TEST(TemperatureKL, DenseTeacherLogitsTakePrecedenceOverTopK) {
  torch::manual_seed(8);
  const auto zs = torch::randn({3, 8}, torch::kFloat64), zt = torch::randn({3, 8}, torch::kFloat64);
  const auto topk = zt.topk(2, -1);
  const auto v = std::get<0>(topk), i = std::get<1>(topk);
  kd::DistillBatch batch;
  batch.student.logits = zs;
  batch.teacher.logits = zt;
  batch.teacher.extras["topk_logits"] = v;
  batch.teacher.extras["topk_indices"] = i;
  kd::TemperatureKL kl;
  EXPECT_EQ(kl->forward(batch).total.item<double>(), kd::functional::temperature_kl(zs, zt).item<double>());
}

TEST(TemperatureKL, FloatAndHalfLogitsWork) {
  torch::manual_seed(9);
  const auto zs = torch::randn({2, 9, 50}, torch::kFloat64) * 3, zt = torch::randn({2, 9, 50}, torch::kFloat64) * 3;
  const auto o = kd::TemperatureKLOptions().temperature(2.0).chunk_size(4);
  const double exact = kd::functional::temperature_kl(zs, zt, o).item<double>();
  auto s32 = zs.to(torch::kFloat).requires_grad_(true);
  auto l32 = kd::functional::temperature_kl(s32, zt.to(torch::kFloat), o);
  EXPECT_EQ(l32.scalar_type(), torch::kFloat);
  EXPECT_NEAR(l32.item<double>(), exact, 1e-5 * exact);
  l32.backward();
  EXPECT_EQ(s32.grad().scalar_type(), torch::kFloat);
  auto s16 = zs.to(torch::kHalf).requires_grad_(true);
  auto l16 = kd::functional::temperature_kl(s16, zt.to(torch::kHalf), o);
  EXPECT_EQ(l16.scalar_type(), torch::kFloat);  // softened in float32
  EXPECT_NEAR(l16.item<double>(), exact, 2e-2 * exact);
  l16.backward();
  EXPECT_EQ(s16.grad().scalar_type(), torch::kHalf);
}

// Expects kd::Error of `category` whose message contains every piece.
template <typename Fn>
void expect_error(Fn fn, kd::ErrorCategory category, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), category) << e.what();
    for (const auto& p : pieces) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

TEST(TemperatureKL, BadOptionsAndInputsThrowClearErrors) {
  using kd::ErrorCategory;
  const auto zs = torch::randn({2, 3}, torch::kFloat64), zt = torch::randn({2, 3}, torch::kFloat64);
  expect_error([] { kd::TemperatureKL(kd::TemperatureKLOptions().temperature(0.0)); }, ErrorCategory::kValue,
               {"temperature", "> 0"});
  expect_error([] { kd::TemperatureKL(kd::TemperatureKLOptions().temperature(-1.0)); }, ErrorCategory::kValue, {"-1"});
  expect_error([] { kd::TemperatureKL(kd::TemperatureKLOptions().mode(kd::KLMode::kJSD).beta(1.5)); },
               ErrorCategory::kValue, {"beta", "1.5"});
  expect_error([] { kd::TemperatureKL(kd::TemperatureKLOptions().beta(-0.1)); }, ErrorCategory::kValue, {"beta"});
  expect_error([] { kd::TemperatureKL(kd::TemperatureKLOptions().chunk_size(-2)); }, ErrorCategory::kValue,
               {"chunk_size"});
  expect_error(
      [] { kd::TemperatureKL(kd::TemperatureKLOptions().temperature_schedule(kd::Schedule::linear(2.0, 0.0))); },
      ErrorCategory::kValue, {"temperature_schedule", "linear(2 -> 0)"});
  expect_error([&] { kd::functional::temperature_kl(zs, zt, kd::TemperatureKLOptions().temperature(0.0)); },
               ErrorCategory::kValue, {"temperature"});
  // Shapes: both named.
  expect_error(
      [&] {
        kd::functional::temperature_kl(zs, torch::randn({2, 4}, torch::kFloat64));
      },
      ErrorCategory::kShape, {"[2, 3]", "[2, 4]"});
  expect_error(
      [&] {
        kd::functional::temperature_kl(zs, torch::randn({3, 3}, torch::kFloat64));
      },
      ErrorCategory::kShape, {"[2, 3]", "[3, 3]"});
  expect_error([&] { kd::functional::temperature_kl(torch::randn({3}), torch::randn({3})); }, ErrorCategory::kShape,
               {"student logits [3] and teacher logits [3]"});
  expect_error([&] { kd::functional::temperature_kl(zs, zt, torch::ones({3}), {}); }, ErrorCategory::kShape,
               {"[3]", "[2, 3]"});
  // Non-finite logits at counted rows give a non-finite loss, as in PyTorch: kd::StagedTrainer's
  // non-finite policy decides what the step becomes.
  auto nan_s = zs.clone();
  nan_s[1][2] = std::nan("");
  EXPECT_FALSE(std::isfinite(kd::functional::temperature_kl(nan_s, zt).item<double>()));
  auto inf_t = zt.clone();
  inf_t[0][0] = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(std::isfinite(kd::functional::temperature_kl(zs, inf_t).item<double>()));
  // Missing teacher, missing student.
  kd::TemperatureKL kl;
  kd::DistillBatch batch;
  batch.student.logits = zs;
  expect_error([&] { kl->forward(batch); }, ErrorCategory::kModel, {"topk_logits", "logits"});
  expect_error([&] { kd::functional::temperature_kl(torch::Tensor(), zt); }, ErrorCategory::kModel, {"student"});
  // Sequence batch: a mask or targets of the wrong shape.
  kd::DistillBatch seq;
  seq.student.logits = torch::randn({2, 4, 5}, torch::kFloat64);
  seq.teacher.logits = torch::randn({2, 4, 5}, torch::kFloat64);
  seq.mask = torch::ones({2, 3});
  expect_error([&] { kl->forward(seq); }, ErrorCategory::kShape, {"[2, 3]", "[2, 4, 5]"});
  seq.mask = torch::Tensor();
  seq.targets = torch::zeros({2, 5}, torch::kLong);
  expect_error([&] { kl->forward(seq); }, ErrorCategory::kShape, {"[2, 5]", "[2, 4, 5]", "ignore_index"});
  // Sparse teacher: shapes and index range.
  const auto s3 = torch::randn({2, 4, 5}, torch::kFloat64);
  const auto topk = torch::randn({2, 4, 5}, torch::kFloat64).topk(2, -1);
  const auto v = std::get<0>(topk), i = std::get<1>(topk);
  expect_error([&] { kd::functional::temperature_kl_topk(s3, v, i.narrow(2, 0, 1)); }, ErrorCategory::kShape,
               {"[2, 4, 2]", "[2, 4, 1]", "[2, 4, 5]"});
  expect_error([&] { kd::functional::temperature_kl_topk(s3, v.narrow(0, 0, 1), i.narrow(0, 0, 1)); },
               ErrorCategory::kShape, {"[1, 4, 2]", "[2, 4, 5]"});
  expect_error([&] { kd::functional::temperature_kl_topk(s3, v, i + 4); }, ErrorCategory::kValue,
               {"indices [2, 4, 2]", "[2, 4, 5]", "[0, 4]"});
  expect_error([&] { kd::functional::temperature_kl_topk(s3, v, v); }, ErrorCategory::kValue, {"integer"});
}

}  // namespace
