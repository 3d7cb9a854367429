// kd::qat::export_int8 / load_int8: a fresh model loaded from the int8 file reproduces the
// fake-quantized model; the file holds int8 weights and is ~1/4 of the float32 state; excluded
// layers travel in float; bad files and other architectures are clear errors.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/quant/int8_export.h"
#include "kd/quant/qat.h"
#include "reference.h"

namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A small CNN classifier with two activation points and a BatchNorm (float buffers + an int64 one).
struct NetImpl : torch::nn::Module {
  explicit NetImpl(int64_t hidden = 16) {
    in_q = register_module("in_q", kd::qat::FakeQuantize());
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3)));
    bn = register_module("bn", torch::nn::BatchNorm2d(4));
    act = register_module("act", kd::qat::FakeQuantize());
    fc = register_module("fc", torch::nn::Linear(4 * 6 * 6, hidden));
    head = register_module("head", torch::nn::Linear(hidden, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto a = act(torch::relu(bn(conv(in_q(x)))));
    return head(torch::relu(fc(a.flatten(1))));
  }
  kd::qat::FakeQuantize in_q{nullptr}, act{nullptr};
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr}, head{nullptr};
};
TORCH_MODULE(Net);

// A few QAT training steps on a toy task, then observers frozen and the model in eval mode.
std::pair<Net, kd::qat::QAT> trained_qat_net(const kd::qat::Options& options = {}) {
  torch::manual_seed(11);
  Net net;
  auto qat = kd::qat::prepare(net.ptr(), options);
  torch::optim::SGD opt(net->parameters(), 0.05);
  for (int step = 0; step < 20; ++step) {
    const auto x = torch::randn({16, 1, 8, 8});
    const auto y = (x.mean({1, 2, 3}) > 0).to(torch::kLong) + (x.std({1, 2, 3}) > 1).to(torch::kLong);
    qat->refresh();
    torch::nn::functional::cross_entropy(net(x), y).backward();
    opt.step();
    opt.zero_grad();
  }
  qat->freeze_observers();
  net->eval();
  return {net, qat};
}

std::string error_of(const std::function<void()>& fn, kd::ErrorCategory* category = nullptr) {
  try {
    fn();
  } catch (const kd::Error& e) {
    if (category) *category = e.category();
    return e.what();
  }
  return "no error";
}

TEST(Int8Export, LoadedModelReproducesTheFakeQuantizedModel) {
  auto [net, qat] = trained_qat_net();
  torch::manual_seed(12);
  const auto x = torch::randn({64, 1, 8, 8});
  torch::Tensor fq_logits;
  {
    torch::NoGradGuard ng;
    qat->refresh();
    fq_logits = net(x);
  }
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  const auto report = kd::qat::export_int8(*net, *qat, path);
  EXPECT_EQ(report.weight_sites, 3);
  EXPECT_EQ(report.activation_sites, 2);
  EXPECT_EQ(report.int8_values, 4 * 9 + 16 * 144 + 3 * 16);
  // Biases (3), BatchNorm weight, bias, running mean, running var, num_batches_tracked (5).
  EXPECT_EQ(report.float_tensors, 8);
  EXPECT_EQ(report.file_bytes, static_cast<int64_t>(fs::file_size(path)));

  Net fresh;  // other random weights, disabled placeholders
  const auto loaded = kd::qat::load_int8(*fresh, path);
  EXPECT_EQ(loaded.weight_sites, 3);
  EXPECT_EQ(loaded.float_tensors, 8);
  fresh->eval();
  EXPECT_TRUE(fresh->act->fake_quant_enabled());
  EXPECT_FALSE(fresh->act->observer_enabled());
  EXPECT_TRUE(torch::equal(fresh->act->scale, net->act->scale));
  EXPECT_TRUE(torch::equal(fresh->act->zero_point, net->act->zero_point));
  // The dequantized weights are the fake-quantized weights, bit for bit.
  EXPECT_TRUE(torch::equal(fresh->fc->weight, net->fc->weight));
  EXPECT_TRUE(torch::equal(fresh->conv->weight, net->conv->weight));
  EXPECT_TRUE(torch::equal(fresh->bn->running_var, net->bn->running_var));
  torch::Tensor logits;
  {
    torch::NoGradGuard ng;
    logits = fresh(x);
  }
  EXPECT_TRUE(torch::equal(logits.argmax(1), fq_logits.argmax(1)));
  // Same weights bit for bit and the same activation grids: the logits agree far inside one quantization step.
  EXPECT_LE((logits - fq_logits).abs().max().item<double>(), 1e-6);
}

TEST(Int8Export, FileHoldsInt8WeightsWithTheirScales) {
  auto [net, qat] = trained_qat_net();
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  kd::qat::export_int8(*net, *qat, path);
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  c10::IValue names;
  ASSERT_TRUE(archive.try_read("weight.names", names));
  const auto list = names.toList();
  ASSERT_EQ(list.size(), 3u);
  const std::string second = list.get(1).toStringRef();
  EXPECT_EQ(second, "fc");
  torch::Tensor q, scale, zp;
  archive.read("weight.1.q", q);
  archive.read("weight.1.scale", scale);
  archive.read("weight.1.zero_point", zp);
  EXPECT_EQ(q.scalar_type(), torch::kInt8);
  EXPECT_EQ(q.sizes(), net->fc->weight.sizes());
  EXPECT_GE(q.min().item<int>(), -127);
  EXPECT_LE(q.max().item<int>(), 127);
  EXPECT_EQ(scale.sizes(), (std::vector<int64_t>{16}));
  EXPECT_TRUE(torch::equal(zp, torch::zeros({16}, torch::kInt)));
  // q = clamp(round(W0 / s) + z): the integers of the fake-quantized weight (frozen scale, current W0).
  const auto w0 = qat->weight_sites()[1].weight.detach();
  const auto expected = torch::clamp(torch::round(w0 * scale.reciprocal().view({16, 1})), -127, 127);  // as ATen
  EXPECT_LE((q.to(torch::kFloat) - expected).abs().max().item<float>(), 0.0f);
}

TEST(Int8Export, LinearHeavyModelFileIsAboutAQuarterOfFloat32) {
  auto model = torch::nn::Sequential(torch::nn::Linear(512, 512));
  auto qat = kd::qat::prepare(model.ptr());
  qat->refresh();
  const std::string path = kd::testing::temp_dir("int8") + "/big.int8.pt";
  const auto report = kd::qat::export_int8(*model, *qat, path);
  EXPECT_EQ(report.float32_bytes, (512 * 512 + 512) * 4);
  EXPECT_LE(report.ratio(), 0.3) << report.to_string();
  EXPECT_GE(report.ratio(), 0.25) << report.to_string();
  EXPECT_THAT(report.to_string(), HasSubstr("× float32 state 1,050,624 bytes (1 int8 weight, 262,144 values; 0 "
                                            "activation points; 1 float tensor)"));
  // Loaded into a fresh one: the dequantized weight.
  auto fresh = torch::nn::Sequential(torch::nn::Linear(512, 512));
  kd::qat::load_int8(*fresh, path);
  auto fresh_linear = fresh->ptr<torch::nn::LinearImpl>(0);
  auto linear = model->ptr<torch::nn::LinearImpl>(0);
  EXPECT_TRUE(torch::equal(fresh_linear->weight, linear->weight));
  EXPECT_TRUE(torch::equal(fresh_linear->bias, linear->bias));
}

TEST(Int8Export, ExcludedLayersAreExportedInFloat) {
  auto [net, qat] = trained_qat_net(kd::qat::Options().exclude({"^head$"}));
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  const auto report = kd::qat::export_int8(*net, *qat, path);
  EXPECT_EQ(report.weight_sites, 2);
  EXPECT_EQ(report.float_tensors, 9);
  Net fresh;
  kd::qat::load_int8(*fresh, path);
  EXPECT_TRUE(torch::equal(fresh->head->weight, net->head->weight));  // exact float weights
  EXPECT_EQ(qat->sites().back().name, "head");
  EXPECT_TRUE(qat->sites().back().excluded);
  EXPECT_FALSE(torch::equal(fresh->fc->named_parameters(false)["weight"], qat->weight_sites()[1].weight));
}

TEST(Int8Export, MissingFileIsAFileError) {
  Net net;
  kd::ErrorCategory category{};
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*net, "/nonexistent/x.int8.pt"); }, &category),
              HasSubstr("int8 file '/nonexistent/x.int8.pt' does not exist"));
  EXPECT_EQ(category, kd::ErrorCategory::kFile);
}

TEST(Int8Export, CorruptTruncatedOrForeignFilesAreFormatErrors) {
  auto [net, qat] = trained_qat_net();
  const std::string dir = kd::testing::temp_dir("int8");
  const std::string path = dir + "/net.int8.pt";
  kd::qat::export_int8(*net, *qat, path);
  kd::ErrorCategory category{};

  const std::string truncated = dir + "/truncated.pt";
  fs::copy_file(path, truncated);
  fs::resize_file(truncated, fs::file_size(path) / 2);
  Net fresh;
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*fresh, truncated); }, &category),
              HasSubstr("is not an int8 file written by kd::qat::export_int8"));
  EXPECT_EQ(category, kd::ErrorCategory::kFormat);

  const std::string garbage = dir + "/garbage.pt";
  std::ofstream(garbage) << "this is not a LibTorch archive";
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*fresh, garbage); }, &category), HasSubstr("truncated or corrupt"));
  EXPECT_EQ(category, kd::ErrorCategory::kFormat);

  const std::string checkpoint = dir + "/checkpoint.pt";
  torch::save(net, checkpoint);  // a LibTorch archive, but not ours
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*fresh, checkpoint); }, &category),
              HasSubstr("without the 'kdistill-int8' tag"));
  EXPECT_EQ(category, kd::ErrorCategory::kFormat);

  const std::string future = dir + "/future.pt";
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string("kdistill-int8")));
  archive.write("version", c10::IValue(int64_t{2}));
  archive.save_to(future);
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*fresh, future); }, &category),
              HasSubstr("has format version 2; this kdistill reads version 1"));
  EXPECT_EQ(category, kd::ErrorCategory::kFormat);

  // Nothing was changed by the failed loads.
  EXPECT_FALSE(fresh->act->fake_quant_enabled());
}

TEST(Int8Export, OtherArchitecturesAreShapeErrorsNamingTheTensor) {
  auto [net, qat] = trained_qat_net();
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  kd::qat::export_int8(*net, *qat, path);
  kd::ErrorCategory category{};
  Net wider(20);
  const auto before = wider->fc->weight.clone();
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*wider, path); }, &category),
              HasSubstr("tensor 'fc.weight' is [16, 144] in the file but [20, 144] in the model"));
  EXPECT_EQ(category, kd::ErrorCategory::kShape);
  EXPECT_TRUE(torch::equal(wider->fc->weight, before));  // untouched

  // A model with an extra layer: the file lacks it.
  struct MoreImpl : NetImpl {
    MoreImpl() { extra = register_module("extra", torch::nn::Linear(3, 3)); }
    torch::nn::Linear extra{nullptr};
  };
  auto more = std::make_shared<MoreImpl>();
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*more, path); }, &category),
              HasSubstr("lacks the model's tensor 'extra.bias' [3]"));
  EXPECT_EQ(category, kd::ErrorCategory::kShape);

  // A model without the head: the file has it.
  auto headless = torch::nn::Sequential(torch::nn::Linear(144, 16));
  EXPECT_THAT(error_of([&] { kd::qat::load_int8(*headless, path); }, &category),
              HasSubstr("has an int8 Linear/Conv layer 'conv' [4, 1, 3, 3] but the model does not"));
  EXPECT_EQ(category, kd::ErrorCategory::kShape);
}

TEST(Int8Export, ExportNeedsObservedWeightsAndTheSameModel) {
  Net net;
  auto qat = kd::qat::prepare(net.ptr());
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  kd::ErrorCategory category{};
  EXPECT_THAT(error_of([&] { kd::qat::export_int8(*net, *qat, path); }, &category),
              HasSubstr("the weight quantizer of 'conv' has never observed its weight"));
  EXPECT_EQ(category, kd::ErrorCategory::kState);
  EXPECT_FALSE(fs::exists(path));
  Net other;
  qat->refresh();
  EXPECT_THAT(error_of([&] { kd::qat::export_int8(*other, *qat, path); }, &category),
              HasSubstr("prepared on another model"));
  EXPECT_EQ(category, kd::ErrorCategory::kValue);
}

}  // namespace
