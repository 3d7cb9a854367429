// kd::qat::export_int8 / load_int8 and the int8 file format (read_int8_file): a fresh model loaded
// from the int8 file reproduces the fake-quantized model; the file holds int8 weights and is ~1/4
// of the float32 state (≤ 0.30 for the default DepthwiseCnnStudent); excluded layers travel in
// float; truncated, corrupt, foreign and future files and other architectures are clear errors.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include <zlib.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/adapters/lora.h"
#include "kd/core/error.h"
#include "kd/models/cnn.h"
#include "kd/nn/linear.h"
#include "kd/quant/int8_export.h"
#include "kd/quant/int8_file.h"
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

// Little-endian integer at `at` of a byte string (the format's header, read independently of the reader).
uint64_t le(const std::string& bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(static_cast<uint8_t>(bytes[at + i])) << (8 * i);
  return v;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(Int8Export, FileHoldsInt8WeightsWithTheirScales) {
  auto [net, qat] = trained_qat_net();
  const std::string path = kd::testing::temp_dir("int8") + "/net.int8.pt";
  kd::qat::export_int8(*net, *qat, path);

  // The header as documented: magic, version 2, record count, index and data sizes adding up to the file.
  const auto bytes = file_bytes(path);
  ASSERT_GE(bytes.size(), 40u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("KDQINT8\n"));
  EXPECT_EQ(le(bytes, 8, 4), 2u);
  EXPECT_EQ(le(bytes, 12, 4), 3u + 2u + 8u);  // 3 weights, 2 activation points, 8 float tensors
  const uint64_t index = le(bytes, 16, 8), data = le(bytes, 24, 8);
  EXPECT_EQ((40 + index + 7) / 8 * 8 + data, bytes.size());

  const auto records = kd::qat::read_int8_file(path);
  using Kind = kd::qat::Int8Record::Kind;
  std::vector<const kd::qat::Int8Record*> weights;
  for (const auto& r : records) {
    if (r.kind == Kind::kWeight) weights.push_back(&r);
  }
  ASSERT_EQ(weights.size(), 3u);
  const auto& fc = *weights[1];
  EXPECT_EQ(fc.name, "fc");
  EXPECT_EQ(fc.values.scalar_type(), torch::kInt8);
  EXPECT_EQ(fc.values.sizes(), net->fc->weight.sizes());
  EXPECT_GE(fc.values.min().item<int>(), -127);
  EXPECT_LE(fc.values.max().item<int>(), 127);
  EXPECT_EQ(fc.quant_min, -127);
  EXPECT_EQ(fc.quant_max, 127);
  EXPECT_EQ(fc.axis, 0);
  EXPECT_EQ(fc.scale.sizes(), (std::vector<int64_t>{16}));
  EXPECT_TRUE(torch::equal(fc.scale, qat->weight_sites()[1].quantizer->scale));
  EXPECT_TRUE(torch::equal(fc.zero_point, torch::zeros({16}, torch::kInt)));  // symmetric: not stored, zeros
  // q = clamp(round(W0 / s) + z): the integers of the fake-quantized weight (frozen scale, current W0).
  const auto w0 = qat->weight_sites()[1].weight.detach();
  const auto expected = torch::clamp(torch::round(w0 * fc.scale.reciprocal().view({16, 1})), -127, 127);  // as ATen
  EXPECT_TRUE(torch::equal(fc.values.to(torch::kFloat), expected));
  // Activation points keep their (non-zero) affine zero points; the float remainder is float32 except the counter.
  for (const auto& r : records) {
    if (r.kind == Kind::kActivation && r.name == "act") {
      EXPECT_TRUE(torch::equal(r.zero_point, net->act->zero_point));
      EXPECT_TRUE(torch::equal(r.scale, net->act->scale));
      EXPECT_EQ(r.quant_min, 0);
      EXPECT_EQ(r.quant_max, 255);
      EXPECT_FALSE(r.symmetric);
    }
    if (r.kind == Kind::kTensor) {
      EXPECT_EQ(r.values.scalar_type(), r.name == "bn.num_batches_tracked" ? torch::kInt64 : torch::kFloat) << r.name;
    }
  }
}

TEST(Int8Export, DefaultStudentFileIsAtMostThreeTenthsOfFloat32) {
  // kd-train's default student (16 650 parameters, 98 % of them in int8 weights) with its activation points.
  torch::manual_seed(4);
  kd::models::DepthwiseCnnStudent student(kd::models::DepthwiseCnnStudentOptions().activation_quant(true));
  auto qat = kd::qat::prepare(student.ptr());
  {
    torch::NoGradGuard ng;
    qat->refresh();
    student->forward(torch::rand({8, 1, 28, 28}));  // the activation points observe a batch
  }
  const std::string path = kd::testing::temp_dir("int8") + "/student.int8.pt";
  const auto report = kd::qat::export_int8(*student, *qat, path);
  EXPECT_EQ(report.int8_values, 16 * 9 + 16 * 9 + 32 * 16 + 10 * 1568);
  EXPECT_EQ(report.float32_bytes, 67032);  // 16 650 parameters + BatchNorm statistics + quantizer ranges, float32
  EXPECT_LE(report.ratio(), 0.30) << report.to_string();
  std::cout << "DepthwiseCnnStudent: " << report.to_string() << "\n";
  // The loaded file reproduces the fake-quantized student exactly.
  kd::models::DepthwiseCnnStudent fresh(kd::models::DepthwiseCnnStudentOptions().activation_quant(true));
  kd::qat::load_int8(*fresh, path);
  student->eval();
  fresh->eval();
  torch::NoGradGuard ng;
  qat->freeze_observers();
  qat->refresh();
  const auto x = torch::rand({16, 1, 28, 28});
  EXPECT_TRUE(torch::equal(fresh->forward(x).logits, student->forward(x).logits));
}

TEST(Int8Export, LinearHeavyModelFileIsAboutAQuarterOfFloat32) {
  auto model = torch::nn::Sequential(torch::nn::Linear(512, 512));
  auto qat = kd::qat::prepare(model.ptr());
  qat->refresh();
  const std::string path = kd::testing::temp_dir("int8") + "/big.int8.pt";
  const auto report = kd::qat::export_int8(*model, *qat, path);
  EXPECT_EQ(report.float32_bytes, (512 * 512 + 512) * 4);
  // The layout, in closed form: header 40 + index (weight "0": 59 bytes, tensor "0.bias": 27) padded to 128,
  // then 512·512 int8 values, 512 float32 scales (symmetric: no zero points), 512 float32 biases.
  EXPECT_EQ(report.file_bytes, 128 + 512 * 512 + 512 * 4 + 512 * 4);  // 266,368 bytes = 0.2535 ×
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
  // The head is a float tensor record; fc (quantized) is loaded on its per-channel grid: W / s is integral.
  bool head_in_float = false;
  for (const auto& r : kd::qat::read_int8_file(path)) {
    if (r.name == "head.weight") head_in_float = r.kind == kd::qat::Int8Record::Kind::kTensor;
    EXPECT_NE(r.name, "head") << "the excluded head must not be an int8 weight";
  }
  EXPECT_TRUE(head_in_float);
  const auto s = qat->weight_sites()[1].quantizer->scale.view({-1, 1});
  const auto steps = fresh->fc->weight / s;
  EXPECT_LE((steps - torch::round(steps)).abs().max().item<float>(), 1e-3f);
  {
    torch::NoGradGuard ng;
    qat->refresh();  // observers frozen: fq(W0) of the current W0, as exported
  }
  EXPECT_TRUE(torch::equal(fresh->fc->weight, net->fc->weight));  // = the fake-quantized weight
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
  const auto good = file_bytes(path);
  Net fresh;
  const auto format_error = [&](const std::string& bytes, const std::string& name) {
    const std::string p = dir + "/" + name;
    write_bytes(p, bytes);
    kd::ErrorCategory category{};
    const auto message = error_of([&] { kd::qat::load_int8(*fresh, p); }, &category);
    EXPECT_EQ(category, kd::ErrorCategory::kFormat) << message;
    EXPECT_THAT(message, HasSubstr("'" + p + "'")) << "names the file";
    return message;
  };

  EXPECT_THAT(format_error(good.substr(0, good.size() / 2), "truncated.pt"),
              HasSubstr("it is truncated: the header promises " + std::to_string(good.size()) + " bytes, the file has " +
                        std::to_string(good.size() / 2)));
  EXPECT_THAT(format_error(good.substr(0, 20), "header_only.pt"), HasSubstr("shorter than the header"));
  EXPECT_THAT(format_error(good + "xx", "trailing.pt"), HasSubstr("has 2 bytes after the"));
  auto flipped = good;
  flipped[good.size() - 3] ^= 0x10;  // one bit of the float remainder
  EXPECT_THAT(format_error(flipped, "flipped.pt"), HasSubstr("the file is corrupt"));
  EXPECT_THAT(format_error("this is not an int8 file at all, not even close", "garbage.pt"),
              HasSubstr("it does not start with the int8 magic"));
  auto future = good;
  future[8] = 3;  // version 3
  EXPECT_THAT(format_error(future, "future.pt"), HasSubstr("has format version 3; this kdistill reads version 2"));

  const std::string checkpoint = dir + "/checkpoint.pt";
  torch::save(net, checkpoint);  // a LibTorch archive (as version-1 int8 files were)
  EXPECT_THAT(format_error(file_bytes(checkpoint), "checkpoint_copy.pt"), HasSubstr("it is a zip archive, i.e. a LibTorch file"));

  // An index entry pointing outside the data: corrupt with a recomputed, valid CRC.
  auto outside = good;
  const uint64_t index = le(good, 16, 8);
  // The first record is conv's weight: kind, dtype, name "conv", ndim 4 + dims, grid, flags, C, scale offset, values offset.
  const size_t values_offset_at = 40 + 1 + 1 + 2 + 4 + 1 + 4 * 8 + 4 * 3 + 1 + 8 + 8;
  ASSERT_LT(values_offset_at + 8, 40 + index);
  for (int i = 0; i < 8; ++i) outside[values_offset_at + i] = static_cast<char>(0x7f);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(outside.data() + 40), static_cast<uInt>(outside.size() - 40));
  for (int i = 0; i < 4; ++i) outside[32 + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
  EXPECT_THAT(format_error(outside, "outside.pt"), HasSubstr("weight 'conv''s values lies outside the data"));

  // Nothing was changed by the failed loads.
  EXPECT_FALSE(fresh->act->fake_quant_enabled());
  EXPECT_FALSE(torch::equal(fresh->fc->weight, net->fc->weight));
}

TEST(Int8File, RecordsRoundTripAndBadRecordsAreRefusedBeforeWriting) {
  const std::string dir = kd::testing::temp_dir("int8file");
  using Kind = kd::qat::Int8Record::Kind;
  kd::qat::Int8Record w;
  w.kind = Kind::kWeight;
  w.name = "layer";
  w.values = torch::tensor({{0, 3, 255}, {7, 1, 2}}, torch::kUInt8);
  w.scale = torch::tensor({0.5f, 0.25f});
  w.zero_point = torch::tensor({128, 3}, torch::kInt);
  w.quant_min = 0;
  w.quant_max = 255;
  w.axis = 0;
  kd::qat::Int8Record t;
  t.kind = Kind::kTensor;
  t.name = "flags";
  t.values = torch::tensor({true, false, true});
  kd::qat::Int8Record scalar;
  scalar.kind = Kind::kTensor;
  scalar.name = "step";
  scalar.values = torch::tensor(int64_t{41});
  kd::qat::write_int8_file(dir + "/ok.bin", {w, t, scalar});
  const auto back = kd::qat::read_int8_file(dir + "/ok.bin");
  ASSERT_EQ(back.size(), 3u);
  EXPECT_TRUE(torch::equal(back[0].values, w.values));
  EXPECT_TRUE(torch::equal(back[0].scale, w.scale));
  EXPECT_TRUE(torch::equal(back[0].zero_point, w.zero_point));  // non-zero: stored
  EXPECT_EQ(back[0].axis, 0);
  EXPECT_TRUE(torch::equal(back[1].values, t.values));
  EXPECT_EQ(back[2].values.dim(), 0);
  EXPECT_EQ(back[2].values.item<int64_t>(), 41);

  const auto refused = [&](kd::qat::Int8Record r) {
    const auto m = error_of([&] { kd::qat::write_int8_file(dir + "/bad.bin", {r}); });
    EXPECT_FALSE(fs::exists(dir + "/bad.bin"));
    return m;
  };
  auto wrong_channels = w;
  wrong_channels.scale = torch::tensor({0.5f, 0.25f, 1.f});
  wrong_channels.zero_point = torch::zeros({3}, torch::kInt);
  EXPECT_THAT(refused(wrong_channels), HasSubstr("weight 'layer' has 3 scales for values [2, 3] along axis 0"));
  auto float_weight = w;
  float_weight.values = torch::ones({2, 3});
  EXPECT_THAT(refused(float_weight), HasSubstr("int8 weights are int8 or uint8"));
  EXPECT_THAT(error_of([&] { kd::qat::write_int8_file(dir + "/bad.bin", {t, t}); }), HasSubstr("tensor 'flags' appears twice"));
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

TEST(Int8Export, UnmergedLoRAAdapterIsRefusedMergedOneIsExported) {
  torch::manual_seed(9);
  auto net = torch::nn::Sequential(kd::nn::Linear(6, 4));
  auto lora = kd::lora::apply(net.ptr(), kd::lora::Options().rank(2));
  {
    torch::NoGradGuard ng;
    lora->named_parameters()["0.lora_B"].normal_();  // a non-zero update
  }
  auto qat = kd::qat::prepare(net.ptr());
  qat->refresh();
  const std::string path = kd::testing::temp_dir("int8") + "/lora.int8.pt";
  kd::ErrorCategory category{};
  EXPECT_THAT(error_of([&] { kd::qat::export_int8(*net, *qat, path); }, &category),
              HasSubstr("layer '0' has an active 'lora' adapter, which the int8 file would not hold; merge it"));
  EXPECT_EQ(category, kd::ErrorCategory::kState);
  EXPECT_FALSE(fs::exists(path));
  lora->merge();
  qat->refresh();
  EXPECT_NO_THROW(kd::qat::export_int8(*net, *qat, path));
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
