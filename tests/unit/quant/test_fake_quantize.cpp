// kd::qat::FakeQuantize against torch.ao.quantization.FakeQuantize (tests/parity/qat_fake_quantize.py):
// scales, zero points, observed ranges, outputs and input gradients over several calls; plus the
// placeholder, the switches, configure/set_qparams, checkpoints, clone and bad options.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "kd/core/error.h"
#include "kd/quant/fake_quantize.h"
#include "reference.h"

namespace {

using kd::qat::FakeQuantize;
using kd::qat::FakeQuantizeOptions;
using kd::qat::Observer;
using kd::testing::max_rel_error;
using ::testing::HasSubstr;

const kd::testing::Reference& ref() {
  static const kd::testing::Reference r(kd::testing::run_python("qat_fake_quantize.py") + "/qat_fake_quantize.json");
  return r;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kd::Error& e) {
    return e.what();
  }
  return "no error";
}

struct Config {
  std::string name;
  FakeQuantizeOptions options;
};

// The same configurations as the parity script.
std::vector<Config> configs() {
  const auto base = [](int64_t qmin, int64_t qmax, bool symmetric, bool per_channel, Observer observer) {
    return FakeQuantizeOptions().quant_min(qmin).quant_max(qmax).symmetric(symmetric).per_channel(per_channel).observer(
        observer);
  };
  return {
      {"aff_ma", FakeQuantizeOptions::activation_uint8()},
      {"aff_ma25", FakeQuantizeOptions::activation_uint8().averaging_constant(0.25)},
      {"aff_mm", base(0, 255, false, false, Observer::kMinMax)},
      {"pc_sym", FakeQuantizeOptions::weight_int8(true, true).observer(Observer::kMinMax)},
      {"pc_sym_ma", base(-128, 127, true, true, Observer::kMovingAverage).ch_axis(1).averaging_constant(0.2)},
      {"pc_aff", base(0, 255, false, true, Observer::kMinMax).ch_axis(0)},
      {"pt_sym", base(-128, 127, true, false, Observer::kMinMax)},
      {"pt_sym_u8", base(0, 255, true, false, Observer::kMinMax)},
      {"pt_sym127", FakeQuantizeOptions::weight_int8(/*per_channel=*/false, /*narrow_range=*/true).observer(Observer::kMinMax)},
      {"pt_sym_ma", FakeQuantizeOptions::weight_int8(/*per_channel=*/false, /*narrow_range=*/true)},
      {"pt_sym_ma30", base(-127, 127, true, false, Observer::kMovingAverage).averaging_constant(0.3)},
  };
}

TEST(FakeQuantize, MatchesTorchAoOverSeveralCalls) {
  for (const auto& c : configs()) {
    SCOPED_TRACE(c.name);
    FakeQuantize fq(c.options);
    const int64_t steps = static_cast<int64_t>(ref().scalar(c.name + "_steps"));
    for (int64_t k = 0; k < steps; ++k) {
      SCOPED_TRACE("call " + std::to_string(k));
      const std::string p = c.name + "_";
      const std::string ks = std::to_string(k);
      auto x = ref()[p + "x" + ks].to(torch::kFloat).requires_grad_(true);
      auto y = fq(x);
      EXPECT_EQ(y.scalar_type(), torch::kFloat);
      (y * ref()[p + "g" + ks].to(torch::kFloat)).sum().backward();
      // Bit-identical: the references are float32 values written exactly (float64 repr), so equality is exact.
      const auto f32 = [&](const std::string& n) { return ref()[p + n + ks].to(torch::kFloat); };
      EXPECT_EQ(fq->scale.sizes(), ref()[p + "scale" + ks].sizes());
      EXPECT_TRUE(torch::equal(fq->scale, f32("scale"))) << fq->scale << f32("scale");
      EXPECT_TRUE(torch::equal(fq->zero_point.to(torch::kLong), ref()[p + "zp" + ks])) << fq->zero_point;
      EXPECT_TRUE(torch::equal(fq->min_val, f32("min"))) << fq->min_val << f32("min");
      EXPECT_TRUE(torch::equal(fq->max_val, f32("max"))) << fq->max_val << f32("max");
      EXPECT_TRUE(torch::equal(y, f32("y"))) << max_rel_error(y, f32("y"));
      EXPECT_TRUE(torch::equal(x.grad(), f32("dx")));
    }
  }
}

TEST(FakeQuantize, NarrowPerTensorSymmetricGridIsCentredOnZero) {
  // [-127, 127] per tensor (closed form): z = 0 and s = max|x| / 127, so the largest magnitude maps to ±127.
  FakeQuantize fq(FakeQuantizeOptions::weight_int8(/*per_channel=*/false, /*narrow_range=*/true));
  const auto x = torch::tensor({-2.54f, 0.3f, 1.0f, -0.066f});
  const auto y = fq(x);
  EXPECT_EQ(fq->zero_point.item<int>(), 0);
  EXPECT_EQ(fq->scale.item<float>(), 2.54f / 127.0f);
  const auto q = torch::round(y / fq->scale);
  EXPECT_TRUE(torch::equal(q, torch::tensor({-127.f, 15.f, 50.f, -3.f})));
}

TEST(FakeQuantize, LaterCallsClampAndTheStraightThroughGradientIsClipped) {
  // With c = 0.01 the range barely follows a wider batch: values outside are clamped with zero gradient.
  const auto& r = ref();
  const auto dx = r["aff_ma_dx3"], x = r["aff_ma_x3"], s = r["aff_ma_scale3"], z = r["aff_ma_zp3"];
  const auto q = torch::round(x / s) + z;
  const auto inside = (q >= 0) & (q <= 255);
  EXPECT_GT((~inside).sum().item<int64_t>(), 0) << "the reference should exercise clamping";
  EXPECT_TRUE(torch::equal(dx == 0, ~inside | (r["aff_ma_g3"] == 0)));
}

TEST(FakeQuantize, DefaultConstructedIsADisabledIdentityPlaceholder) {
  FakeQuantize placeholder;
  EXPECT_FALSE(placeholder->fake_quant_enabled());
  EXPECT_FALSE(placeholder->observer_enabled());
  const auto x = torch::randn({3, 4}) * 10;
  const auto y = placeholder(x);
  EXPECT_TRUE(y.is_same(x));
  EXPECT_FALSE(placeholder->observed());
  // Its buffers exist, so a model that declares it has them in its state_dict from the start.
  const auto names = placeholder->named_buffers().keys();
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("scale", "zero_point", "min_val", "max_val",
                                                     "fake_quant_enabled", "observer_enabled"));
  // configure() + enabling turns it into a working fake quantizer.
  placeholder->configure(FakeQuantizeOptions::activation_uint8());
  placeholder->enable_fake_quant(true);
  placeholder->enable_observer(true);
  const auto z = placeholder(x);
  EXPECT_TRUE(placeholder->observed());
  EXPECT_FALSE(torch::equal(z, x));
  EXPECT_LE((z - x).abs().max().item<double>(), 0.5 * placeholder->scale.item<double>() + 1e-6);
}

TEST(FakeQuantize, FrozenObserverKeepsScaleAndZeroPoint) {
  FakeQuantize fq(FakeQuantizeOptions::activation_uint8().averaging_constant(0.5));
  fq(torch::randn({16}));
  fq->enable_observer(false);
  const auto scale = fq->scale.clone(), zp = fq->zero_point.clone(), lo = fq->min_val.clone();
  for (int i = 0; i < 3; ++i) fq(torch::randn({16}) * 5 + 2);
  EXPECT_TRUE(torch::equal(fq->scale, scale));
  EXPECT_TRUE(torch::equal(fq->zero_point, zp));
  EXPECT_TRUE(torch::equal(fq->min_val, lo));
  // Observer on again: the range moves.
  fq->enable_observer(true);
  fq(torch::randn({16}) * 5 + 2);
  EXPECT_FALSE(torch::equal(fq->scale, scale));
}

TEST(FakeQuantize, ObserverWithoutFakeQuantCalibratesAndPassesThrough) {
  FakeQuantize fq(FakeQuantizeOptions::activation_uint8());
  fq->enable_fake_quant(false);
  const auto x = torch::linspace(-1, 3, 11);
  EXPECT_TRUE(torch::equal(fq(x), x));
  EXPECT_NEAR(fq->scale.item<double>(), 4.0 / 255.0, 1e-7);
  EXPECT_EQ(fq->zero_point.item<int64_t>(), 64);  // 0 − round(−1 / (4/255)) = 64
}

TEST(FakeQuantize, CalculateQparamsBeforeObservingGivesTorchDefaults) {
  FakeQuantize fq(FakeQuantizeOptions::weight_int8());
  auto [s, z] = fq->calculate_qparams();
  EXPECT_TRUE(torch::equal(s, torch::ones({1})));
  EXPECT_TRUE(torch::equal(z, torch::zeros({1}, torch::kInt)));
  fq(torch::randn({3, 4}));
  std::tie(s, z) = fq->calculate_qparams();
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{3}));
  EXPECT_TRUE(torch::equal(s, fq->scale));
}

TEST(FakeQuantize, AllZeroInputGivesScaleEps) {
  for (bool symmetric : {false, true}) {
    FakeQuantize fq(FakeQuantizeOptions::activation_uint8().symmetric(symmetric));
    const auto y = fq(torch::zeros({4}));
    EXPECT_EQ(fq->scale.item<float>(), std::numeric_limits<float>::epsilon());
    EXPECT_TRUE(torch::equal(y, torch::zeros({4})));
  }
}

TEST(FakeQuantize, FunctionalMatchesTheFormula) {
  torch::manual_seed(3);
  const auto x = torch::randn({4, 6}) * 3;
  const auto scale = torch::tensor({0.05f, 0.1f, 0.02f, 0.2f});
  const auto zp = torch::tensor({0, 3, -2, 1}, torch::kLong);
  const auto y = kd::functional::fake_quantize(x, scale, zp, -127, 127, 0);
  const auto s = scale.view({4, 1}), z = zp.to(torch::kFloat).view({4, 1});
  const auto expected = (torch::clamp(torch::round(x / s) + z, -127, 127) - z) * s;
  EXPECT_LT(max_rel_error(y, expected), 1e-6);
  const auto y1 = kd::functional::fake_quantize(x, torch::tensor({0.1f}), torch::tensor({5}), 0, 255);
  EXPECT_LT(max_rel_error(y1, (torch::clamp(torch::round(x / 0.1) + 5, 0, 255) - 5) * 0.1), 1e-6);
  // Bad shapes name both.
  EXPECT_THAT(error_of([&] { kd::functional::fake_quantize(x, scale, zp, -127, 127); }), HasSubstr("ch_axis"));
  EXPECT_THAT(error_of([&] { kd::functional::fake_quantize(x, scale, zp, -127, 127, 1); }),
              HasSubstr("4 per-channel scales for a tensor of shape [4, 6] with 6 channels along axis 1"));
}

TEST(FakeQuantize, DoubleInputStaysDoubleAndMatchesFloatObserver) {
  torch::manual_seed(4);
  const auto x = torch::randn({5, 3}, torch::kFloat64).requires_grad_(true);
  FakeQuantize fq(FakeQuantizeOptions::weight_int8(true, true));
  const auto y = fq(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat64);
  EXPECT_EQ(fq->scale.scalar_type(), torch::kFloat);
  y.sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x)));  // symmetric range from the data: nothing clamped
}

TEST(FakeQuantize, StateSurvivesSaveLoadCloneAndDtypeMoves) {
  torch::manual_seed(5);
  FakeQuantize fq(FakeQuantizeOptions::weight_int8(true, true));
  fq(torch::randn({6, 4}));
  fq->enable_observer(false);
  const std::string path = kd::testing::temp_dir("fq") + "/fq.pt";
  torch::save(fq, path);
  // A fresh per-channel quantizer has empty ranges and a [1] scale: loading resizes them.
  FakeQuantize loaded(FakeQuantizeOptions::weight_int8(true, true));
  torch::load(loaded, path);
  EXPECT_TRUE(torch::equal(loaded->scale, fq->scale));
  EXPECT_TRUE(torch::equal(loaded->max_val, fq->max_val));
  EXPECT_FALSE(loaded->observer_enabled());
  const auto x = torch::randn({6, 4});
  EXPECT_TRUE(torch::equal(loaded(x), fq(x)));

  auto copy = std::dynamic_pointer_cast<kd::qat::FakeQuantizeImpl>(fq->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(torch::equal(copy->scale, fq->scale));
  EXPECT_FALSE(copy->scale.is_same(fq->scale));
  EXPECT_TRUE(torch::equal(copy->forward(x), fq(x)));

  fq->to(torch::kFloat64);  // a model moved to double keeps float32/int32 quantization state
  EXPECT_EQ(fq->scale.scalar_type(), torch::kFloat);
  EXPECT_EQ(fq->zero_point.scalar_type(), torch::kInt);
}

TEST(FakeQuantize, ConfigureResetsTheObserverAndKeepsTheSwitches) {
  FakeQuantize fq(FakeQuantizeOptions::activation_uint8());
  fq(torch::randn({8}));
  fq->enable_observer(false);
  fq->configure(FakeQuantizeOptions::weight_int8(true, false));
  EXPECT_FALSE(fq->observed());
  EXPECT_FALSE(fq->observer_enabled());
  EXPECT_TRUE(fq->fake_quant_enabled());
  EXPECT_EQ(fq->min_val.numel(), 0);
  EXPECT_EQ(fq->options().quant_min(), -128);
  fq->set_qparams(torch::tensor({0.5f, 0.25f}), torch::tensor({0, 0}));
  const auto y = fq(torch::tensor({{1.3f, -0.2f}, {0.3f, 9.0f}}));
  EXPECT_TRUE(torch::equal(y, torch::tensor({{1.5f, -0.0f}, {0.25f, 9.0f}})));
  EXPECT_THAT(error_of([&] { fq->set_qparams(torch::ones({2, 1}), torch::zeros({2, 1})); }),
              HasSubstr("must both be [C]"));
}

TEST(FakeQuantize, PerChannelInputWithOtherChannelCountIsAShapeError) {
  FakeQuantize fq(FakeQuantizeOptions::weight_int8().observer(Observer::kMinMax));
  fq(torch::randn({3, 4}));
  try {
    fq(torch::randn({5, 4}));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kShape);
    EXPECT_THAT(e.what(), HasSubstr("has 5 channels along axis 0 but the observer has seen 3"));
  }
}

TEST(FakeQuantize, BadOptionsAreValueErrors) {
  const auto category_of = [](const FakeQuantizeOptions& o) {
    try {
      FakeQuantize fq(o);
    } catch (const kd::Error& e) {
      return e.category();
    }
    return kd::ErrorCategory::kState;
  };
  EXPECT_EQ(category_of(FakeQuantizeOptions().quant_min(1).quant_max(255)), kd::ErrorCategory::kValue);
  EXPECT_EQ(category_of(FakeQuantizeOptions().quant_min(0).quant_max(0)), kd::ErrorCategory::kValue);
  EXPECT_EQ(category_of(FakeQuantizeOptions().averaging_constant(0)), kd::ErrorCategory::kValue);
  EXPECT_EQ(category_of(FakeQuantizeOptions().eps(0)), kd::ErrorCategory::kValue);
  EXPECT_THAT(error_of([] { FakeQuantize fq(FakeQuantizeOptions().quant_min(3).quant_max(255)); }),
              HasSubstr("[3, 255] must contain 0"));
  FakeQuantize ok;
  EXPECT_THAT(error_of([&] { ok->configure(FakeQuantizeOptions().averaging_constant(1.5)); }),
              HasSubstr("averaging_constant must be in (0, 1], got 1.5"));
}

TEST(FakeQuantize, PrettyPrintNamesTheScheme) {
  std::ostringstream s;
  FakeQuantize fq(FakeQuantizeOptions::weight_int8());
  fq->pretty_print(s);
  EXPECT_THAT(s.str(), HasSubstr("quant_min=-127, quant_max=127, symmetric, per_channel(axis=0)"));
}

}  // namespace
