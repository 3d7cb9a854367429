// LossRegistry and LossSpec: built-ins, one-line user registration, sums from specs, error messages.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/hard_label_ce.h"
#include "kd/losses/registry.h"
#include "kd/losses/temperature_kl.h"

namespace {

using ::testing::HasSubstr;

// L = scale · mean(z_s − z_t)²; a user's loss.
struct ScaledMseImpl : torch::nn::Cloneable<ScaledMseImpl> {
  explicit ScaledMseImpl(double scale) : scale(scale) {}
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& b) {
    kd::LossResult r;
    r.total = scale * (b.student.logits - b.teacher.logits).pow(2).mean();
    r.parts["mse"] = r.total.detach();
    return r;
  }
  double scale;
};
TORCH_MODULE(ScaledMse);

}  // namespace

// One line, at namespace scope, with the accepted keys.
KD_REGISTER_LOSS("scaled_mse", [](const kd::LossSpec& s) { return ScaledMse(s.number("scale")); }, {"scale", "unused"});
// One line, returning an AnyModule, no key list.
KD_REGISTER_LOSS("any_mse", [](const kd::LossSpec& s) { return torch::nn::AnyModule(ScaledMse(s.number("scale", 2.0))); });

namespace {

std::string message_of(const std::function<void()>& f, kd::ErrorCategory expected = kd::ErrorCategory::kConfig) {
  try {
    f();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), expected) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no kd::Error";
  return "";
}

// T²/B·Σ_b Σ_c p_t (log p_t − log p_s), p = softmax(z/T), written out.
double soft_kl(const torch::Tensor& zs, const torch::Tensor& zt, double T) {
  const auto ls = torch::log_softmax(zs / T, 1), lt = torch::log_softmax(zt / T, 1);
  return (lt.exp() * (lt - ls)).sum().item<double>() * T * T / zs.size(0);
}

kd::DistillBatch logits_batch() {
  torch::manual_seed(0);
  kd::DistillBatch b;
  b.student.logits = torch::randn({3, 5}, torch::kFloat64);
  b.teacher.logits = torch::randn({3, 5}, torch::kFloat64);
  b.targets = torch::tensor({0, 4, 2}, torch::kLong);
  return b;
}

TEST(LossRegistry, BuiltinsAndUserLossesAreListed) {
  const auto names = kd::LossRegistry::global().names();
  for (const char* n : {"any_mse", "attention_mse", "dkd", "feature_l2", "gradient_matching", "hard_label_ce", "scaled_mse",
                        "temperature_kl"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(kd::LossRegistry::global().keys("temperature_kl"),
            (std::vector<std::string>{"beta", "chunk_size", "ignore_index", "mode", "standardize", "temperature",
                                      "temperature_end"}));
  EXPECT_FALSE(kd::LossRegistry::global().description("hard_label_ce").empty());
}

TEST(LossRegistry, BuiltinsHonourTheirOptions) {
  auto& reg = kd::LossRegistry::global();
  const auto b = logits_batch();
  auto kl = reg.create(kd::LossSpec("temperature_kl").set("temperature", 3));
  ASSERT_TRUE(kl.as<kd::TemperatureKLImpl>());
  EXPECT_DOUBLE_EQ(kl.as<kd::TemperatureKLImpl>()->options.temperature(), 3.0);
  EXPECT_NEAR(kl.forward(b).total.item<double>(), soft_kl(b.student.logits, b.teacher.logits, 3.0), 1e-12);
  EXPECT_DOUBLE_EQ(reg.create("temperature_kl").as<kd::TemperatureKLImpl>()->options.temperature(), 4.0);
  auto jsd = reg.create(kd::LossSpec("temperature_kl").set("mode", "jsd").set("beta", 0.25).set("chunk_size", 16));
  EXPECT_EQ(jsd.as<kd::TemperatureKLImpl>()->options.mode(), kd::KLMode::kJSD);
  EXPECT_DOUBLE_EQ(jsd.as<kd::TemperatureKLImpl>()->options.beta(), 0.25);
  EXPECT_EQ(jsd.as<kd::TemperatureKLImpl>()->options.chunk_size(), 16);
  auto cooling = reg.create(kd::LossSpec("temperature_kl").set("temperature", 4).set("temperature_end", 1));
  EXPECT_DOUBLE_EQ(cooling.as<kd::TemperatureKLImpl>()->temperature_at(0.0), 4.0);
  EXPECT_DOUBLE_EQ(cooling.as<kd::TemperatureKLImpl>()->temperature_at(0.5), 2.5);
  EXPECT_DOUBLE_EQ(cooling.as<kd::TemperatureKLImpl>()->temperature_at(1.0), 1.0);

  auto ce = reg.create(kd::LossSpec("hard_label_ce").set("label_smoothing", 0.1).set("ignore_index", 4));
  EXPECT_DOUBLE_EQ(ce.as<kd::HardLabelCEImpl>()->options.label_smoothing(), 0.1);
  EXPECT_EQ(ce.as<kd::HardLabelCEImpl>()->options.ignore_index(), 4);

  auto feat = reg.create(kd::LossSpec("feature_l2")
                             .set("teacher_layers", std::vector<double>{1, -1})
                             .set("student_layers", std::vector<double>{0, -1})
                             .set("student_dims", std::vector<double>{4, 0})
                             .set("teacher_dims", std::vector<double>{6, 0})
                             .set("pair_weights", std::vector<double>{0.5, 2})
                             .set("normalize", "l2")
                             .set("init", "orthogonal")
                             .set("pair_weighting", "layer_similarity"));
  const auto f = feat.as<kd::FeatureL2Impl>();
  ASSERT_TRUE(f);
  ASSERT_EQ(f->options.pairs().size(), 2u);
  EXPECT_EQ(f->options.pairs()[0].teacher, 1);
  EXPECT_EQ(f->options.pairs()[1].student, -1);
  EXPECT_DOUBLE_EQ(f->options.pairs()[0].weight, 0.5);
  EXPECT_EQ(f->options.pairs()[0].teacher_dim, 6);
  EXPECT_EQ(f->options.normalize(), kd::FeatureNorm::kL2);
  EXPECT_EQ(f->options.init(), kd::ProjectionInit::kOrthogonal);
  EXPECT_TRUE(static_cast<bool>(f->options.pair_weighting()));
  EXPECT_EQ(f->parameters().size(), 2u);  // the 4 -> 6 projection

  auto attn = reg.create(kd::LossSpec("attention_mse").set("heads", "mean").set("log_space", true));
  EXPECT_EQ(attn.as<kd::AttentionMSEImpl>()->options.heads(), kd::HeadMapping::kMean);
  EXPECT_TRUE(attn.as<kd::AttentionMSEImpl>()->options.log_space());
  EXPECT_EQ(attn.as<kd::AttentionMSEImpl>()->options.pairs()[0].teacher, -1);

  auto r1 = reg.create(kd::LossSpec("gradient_matching").set("lambda_start", 0.9).set("lambda_end", 0.1));
  ASSERT_TRUE(r1.as<kd::GradientMatchingImpl>());
  EXPECT_TRUE(r1.needs_input_grad());
  EXPECT_DOUBLE_EQ(r1.as<kd::GradientMatchingImpl>()->options.lambda()(0.5), 0.5);
  auto r1c = reg.create(kd::LossSpec("gradient_matching").set("lambda", 0.4).set("space", "raw"));
  EXPECT_DOUBLE_EQ(r1c.as<kd::GradientMatchingImpl>()->options.lambda()(0.9), 0.4);
  EXPECT_EQ(r1c.as<kd::GradientMatchingImpl>()->options.space(), kd::GradientSpace::kRaw);
}

TEST(LossRegistry, SumFromSpecsWithUserLoss) {
  auto& reg = kd::LossRegistry::global();
  kd::WeightedSum total = reg.sum({kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 2.0),
                                   kd::LossSpec("scaled_mse").set("scale", 3.0).weight(kd::Schedule::linear(1.0, 0.0)),
                                   "any_mse"});
  EXPECT_EQ(total->names(), (std::vector<std::string>{"kl", "scaled_mse", "any_mse"}));
  auto b = logits_batch();
  b.step.progress = 0.25;
  const auto r = total->forward(b);
  const double kl = soft_kl(b.student.logits, b.teacher.logits, 2.0);
  const double mse = (b.student.logits - b.teacher.logits).pow(2).mean().item<double>();
  EXPECT_NEAR(r.total.item<double>(), 0.8 * kl + 0.75 * 3.0 * mse + 2.0 * mse, 1e-12);
  EXPECT_DOUBLE_EQ(r.parts.at("w.scaled_mse").item<double>(), 0.75);
  EXPECT_NEAR(r.parts.at("scaled_mse.mse").item<double>(), 3.0 * mse, 1e-12);
  EXPECT_FALSE(total->needs_input_grad());
  EXPECT_TRUE(reg.sum({"gradient_matching", "temperature_kl"})->needs_input_grad());
}

TEST(LossRegistry, UnknownTypeListsNamesAndSuggests) {
  const auto msg = message_of([] { kd::LossRegistry::global().create("temprature_kl"); });
  EXPECT_THAT(msg, HasSubstr("unknown loss type 'temprature_kl'"));
  EXPECT_THAT(msg, HasSubstr("Did you mean 'temperature_kl'?"));
  EXPECT_THAT(msg, HasSubstr("attention_mse, dkd, feature_l2, gradient_matching, hard_label_ce"));
  // Nothing close: no suggestion.
  EXPECT_THAT(message_of([] { kd::LossRegistry::global().create("zzzzzzzz"); }), ::testing::Not(HasSubstr("Did you mean")));
  EXPECT_EQ(kd::closest_name("hard_label", {"hard_label_ce", "temperature_kl"}), "hard_label_ce");  // 3 ≤ max(2, 10/3)
  EXPECT_EQ(kd::closest_name("label", {"hard_label_ce", "temperature_kl"}), "");  // 8 edits > max(2, 5/3)
  EXPECT_EQ(kd::closest_name("feature_l1", {"feature_l2", "attention_mse"}), "feature_l2");
}

TEST(LossRegistry, MissingWrongTypeAndUnknownKeys) {
  auto& reg = kd::LossRegistry::global();
  auto msg = message_of([&] { reg.create("scaled_mse"); });
  EXPECT_THAT(msg, HasSubstr("loss spec 'scaled_mse': missing required key 'scale' (a number)"));
  EXPECT_THAT(msg, HasSubstr("allowed keys: scale, unused"));

  msg = message_of([&] { reg.create(kd::LossSpec("temperature_kl").name("soft").set("temperature", "3")); });
  EXPECT_THAT(msg, HasSubstr("loss spec 'temperature_kl' (term 'soft')"));
  EXPECT_THAT(msg, HasSubstr("key 'temperature' must be a number, got a string (\"3\")"));
  EXPECT_THAT(msg, HasSubstr("allowed keys: beta, chunk_size, ignore_index, mode, standardize, temperature, temperature_end"));

  msg = message_of([&] { reg.create(kd::LossSpec("temperature_kl").set("temprature", 3.0)); });
  EXPECT_THAT(msg, HasSubstr("unknown key 'temprature'"));
  EXPECT_THAT(msg, HasSubstr("Did you mean 'temperature'?"));

  msg = message_of([&] { reg.create(kd::LossSpec("hard_label_ce").set("ignore_index", 2.5)); });
  EXPECT_THAT(msg, HasSubstr("key 'ignore_index' must be an integer, got 2.5"));

  msg = message_of([&] { reg.create(kd::LossSpec("feature_l2").set("teacher_layers", std::vector<double>{0})); });
  EXPECT_THAT(msg, HasSubstr("missing required key 'student_layers'"));

  msg = message_of([&] {
    reg.create(kd::LossSpec("feature_l2")
                   .set("teacher_layers", std::vector<double>{0, 1})
                   .set("student_layers", std::vector<double>{0}));
  });
  EXPECT_THAT(msg, HasSubstr("teacher_layers (2 values) and student_layers (1 values)"));

  msg = message_of([&] { reg.create(kd::LossSpec("attention_mse").set("heads", "grouped_").set("log_space", 1)); });
  EXPECT_THAT(msg, HasSubstr("key 'heads' must be one of \"grouped\", \"mean\", got \"grouped_\""));

  msg = message_of([&] { reg.create(kd::LossSpec("attention_mse").set("log_space", 1)); });
  EXPECT_THAT(msg, HasSubstr("key 'log_space' must be a boolean, got a number (1)"));

  // A loss's own option validation, with the spec named in front.
  msg = message_of([&] { reg.create(kd::LossSpec("temperature_kl").name("soft").set("temperature", -1.0)); },
                   kd::ErrorCategory::kValue);
  EXPECT_THAT(msg, HasSubstr("value error: loss spec 'temperature_kl' (term 'soft'): TemperatureKL"));
  EXPECT_THAT(msg, HasSubstr("-1"));
  EXPECT_EQ(msg.find("error: loss spec 'temperature_kl' (term 'soft'): value error"), std::string::npos);  // not doubled
}

TEST(LossRegistry, LocalRegistriesAndDuplicates) {
  kd::LossRegistry reg;
  EXPECT_TRUE(reg.names().empty());
  EXPECT_THAT(message_of([&] { reg.create("temperature_kl"); }), HasSubstr("Registered loss types: (none)"));
  reg.add("mse", [](const kd::LossSpec& s) { return ScaledMse(s.number("scale", 1.0)); });
  EXPECT_TRUE(reg.contains("mse"));
  EXPECT_THAT(message_of([&] { reg.add("mse", [](const kd::LossSpec&) { return ScaledMse(1.0); }); }),
              HasSubstr("already registered"));
  // No key list: any keys pass through to the factory.
  EXPECT_NO_THROW(reg.create(kd::LossSpec("mse").set("whatever", true)));
  EXPECT_TRUE(reg.remove("mse"));
  EXPECT_FALSE(reg.contains("mse"));
  reg.add_builtins();
  EXPECT_TRUE(reg.contains("hard_label_ce"));
  EXPECT_FALSE(reg.contains("scaled_mse"));  // registered in the global registry only
}

// What a loss reads is declared at registration: a CLI decides from it whether a stage runs the teacher and
// which teacher layers a cache keeps, without knowing the loss by name.
TEST(LossRegistry, NeedsAreDeclaredAtRegistration) {
  const auto& reg = kd::LossRegistry::global();
  EXPECT_FALSE(reg.needs("hard_label_ce").teacher());
  for (const char* n : {"temperature_kl", "dkd", "feature_l2", "attention_mse", "gradient_matching", "teacher_mixture_kl"}) {
    EXPECT_TRUE(reg.needs(n).teacher()) << n;
  }
  EXPECT_TRUE(reg.needs("feature_l2").teacher_hidden_states());
  EXPECT_FALSE(reg.needs("feature_l2").teacher_attentions());
  EXPECT_TRUE(reg.needs("attention_mse").teacher_attentions());
  EXPECT_FALSE(reg.needs("attention_mse").teacher_hidden_states());
  EXPECT_TRUE(reg.needs("teacher_mixture_kl").each_teacher());
  EXPECT_FALSE(reg.needs("temperature_kl").each_teacher());
  // A user's loss reads the teacher's logits unless it says otherwise.
  EXPECT_TRUE(reg.needs("scaled_mse").teacher());
  EXPECT_FALSE(reg.needs("scaled_mse").teacher_hidden_states());
  kd::LossRegistry local;
  local.add("targets_only", [](const kd::LossSpec&) { return ScaledMse(1.0); }, {}, "", kd::LossNeeds().teacher(false));
  EXPECT_FALSE(local.needs("targets_only").teacher());
  EXPECT_THAT(message_of([&] { local.needs("target_only"); }), HasSubstr("Did you mean 'targets_only'?"));
}

TEST(LossSpec, TypedGettersAndDefaults) {
  auto s = kd::LossSpec("x")
               .set("n", 2)
               .set("f", 0.5)
               .set("b", true)
               .set("s", "text")
               .set("l", std::vector<double>{1, 2, 3});
  EXPECT_EQ(s.integer("n"), 2);
  EXPECT_DOUBLE_EQ(s.number("f"), 0.5);
  EXPECT_TRUE(s.boolean("b"));
  EXPECT_EQ(s.string("s"), "text");
  EXPECT_EQ(s.integers("l"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(s.number("absent", 7.0), 7.0);
  EXPECT_EQ(s.keys(), (std::vector<std::string>{"b", "f", "l", "n", "s"}));
  EXPECT_EQ(s.term_name(), "x");
  EXPECT_EQ(s.name("y").term_name(), "y");
  EXPECT_THAT(message_of([&] { s.numbers("f"); }), HasSubstr("key 'f' must be a list of numbers, got a number (0.5)"));
  EXPECT_THAT(message_of([&] { s.integers("f", {}); }), HasSubstr("must be a list of numbers"));
  EXPECT_THAT(message_of([&] { s.string("l"); }), HasSubstr("got a list of numbers ([1, 2, 3])"));
}

}  // namespace
