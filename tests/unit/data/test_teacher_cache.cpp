#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/data/teacher_cache.h"
#include "kd/train/staged_trainer.h"
#include "reference.h"

namespace {
namespace fs = std::filesystem;
using kd::data::TeacherCache;
using kd::data::TeacherCacheOptions;

struct NetImpl : kd::Model {
  explicit NetImpl(int64_t hidden) {
    fc1 = register_module("fc1", torch::nn::Linear(6, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, hidden));
    fc3 = register_module("fc3", torch::nn::Linear(hidden, 5));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.hidden_states.push_back(torch::tanh(fc1->forward(x)));
    out.hidden_states.push_back(torch::tanh(fc2->forward(out.hidden_states.back())));
    out.logits = fc3->forward(out.hidden_states.back());
    return out;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

kd::data::TensorDataset data(int64_t n) {
  torch::manual_seed(9);
  return {torch::randn({n, 6}), torch::randint(0, 5, {n}, torch::kLong)};
}

TEST(TeacherCache, LookupReturnsTheTeachersOutputsForAnyIndices) {
  torch::manual_seed(1);
  kd::Teacher teacher(std::make_shared<NetImpl>(8));
  auto ds = data(37);
  const auto path = kd::testing::temp_dir("tcache") + "/t.cache";
  TeacherCache::build(path, teacher, ds, TeacherCacheOptions().hidden_states({-1}).batch_size(10));
  auto cache = TeacherCache::open(path, kd::data::module_fingerprint(*teacher->model()), kd::data::dataset_fingerprint(ds));
  EXPECT_EQ(cache->size(), 37);
  auto idx = torch::tensor({36, 0, 17, 17, 9}, torch::kLong);
  auto got = cache->lookup(idx);
  auto want = teacher->forward(ds.inputs.index_select(0, idx));
  EXPECT_LT((got.logits - want.logits).abs().max().item<double>(), 1e-6);
  ASSERT_EQ(got.hidden_states.size(), 2u);
  EXPECT_FALSE(got.hidden_states[0].defined());  // not stored
  EXPECT_LT((got.hidden_states[1] - want.hidden_states[1]).abs().max().item<double>(), 1e-6);
}

TEST(TeacherCache, TopKAndHalfPrecisionStorage) {
  torch::manual_seed(2);
  kd::Teacher teacher(std::make_shared<NetImpl>(8));
  auto ds = data(2000);
  const auto dir = kd::testing::temp_dir("tcache");
  TeacherCache::build(dir + "/full.cache", teacher, ds);
  TeacherCache::build(dir + "/top2.cache", teacher, ds, TeacherCacheOptions().top_k(2).dtype(torch::kFloat16));
  const auto tfp = kd::data::module_fingerprint(*teacher->model());
  const auto dfp = kd::data::dataset_fingerprint(ds);
  auto full = TeacherCache::open(dir + "/full.cache", tfp, dfp);
  auto top = TeacherCache::open(dir + "/top2.cache", tfp, dfp);
  // 2000 x 5 float32 logits = 40000 bytes vs 2000 x 2 x (fp16 value + int32 index) = 24000, page-rounded.
  EXPECT_LT(top->bytes(), full->bytes());
  auto idx = torch::arange(2000, torch::kLong);
  auto o = top->lookup(idx);
  EXPECT_FALSE(o.logits.defined());
  auto [values, indices] = teacher->forward(ds.inputs).logits.topk(2, -1);
  EXPECT_TRUE(torch::equal(o.extras.at("topk_indices"), indices));
  EXPECT_LT((o.extras.at("topk_logits") - values).abs().max().item<double>(), 1e-2);  // fp16 rounding
}

TEST(TeacherCache, StaleTruncatedAndForeignFilesAreRefusedOrRebuilt) {
  torch::manual_seed(3);
  auto net = std::make_shared<NetImpl>(8);
  kd::Teacher teacher(net);
  auto ds = data(16);
  const auto dir = kd::testing::temp_dir("tcache");
  const auto path = dir + "/t.cache";
  TeacherCache::build(path, teacher, ds);
  const auto dfp = kd::data::dataset_fingerprint(ds);
  const auto old_fp = kd::data::module_fingerprint(*net);
  {
    torch::NoGradGuard no_grad;
    net->fc3->bias.add_(1.0);  // a changed teacher
  }
  const auto new_fp = kd::data::module_fingerprint(*net);
  EXPECT_NE(old_fp, new_fp);
  try {
    TeacherCache::open(path, new_fp, dfp);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kState);
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08x", new_fp);
    EXPECT_NE(std::string(e.what()).find(hex), std::string::npos) << e.what();
  }
  EXPECT_THROW(TeacherCache::open(path, old_fp, dfp ^ 1u), kd::Error);  // other data
  auto rebuilt = TeacherCache::open_or_build(path, teacher, ds);
  auto o = rebuilt->lookup(torch::tensor({3}, torch::kLong));
  EXPECT_LT((o.logits - teacher->forward(ds.inputs.slice(0, 3, 4)).logits).abs().max().item<double>(), 1e-6);

  fs::resize_file(path, fs::file_size(path) - 100);
  try {
    TeacherCache::open(path, new_fp, dfp);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  std::ofstream(dir + "/foreign.cache") << "not a cache at all";
  EXPECT_THROW(TeacherCache::open(dir + "/foreign.cache", new_fp, dfp), kd::Error);
  EXPECT_THROW(rebuilt->lookup(torch::tensor({16}, torch::kLong)), kd::Error);
}

// Trains a 4-wide student from `teacher` online or from `cache` (when given) for 3 epochs of 16-example
// batches with `loss`, recording every step's loss; returns the student.
template <typename MakeLoss>
std::shared_ptr<NetImpl> train_student(kd::Teacher teacher, const std::shared_ptr<TeacherCache>& cache,
                                       const kd::data::TensorDataset& ds, MakeLoss make_loss, std::vector<double>& losses) {
  torch::manual_seed(5);
  auto net = std::make_shared<NetImpl>(4);
  struct Rec : kd::Callback {
    explicit Rec(std::vector<double>& l) : l(l) {}
    void on_step_end(const kd::StepReport& r) override { l.push_back(r.loss.total.item<double>()); }
    std::vector<double>& l;
  };
  kd::StagedTrainer t(kd::Student(net), cache ? std::nullopt : std::optional<kd::Teacher>(teacher),
                      {kd::Stage("kd", make_loss()).epochs(3).lr(0.01)},
                      kd::StagedTrainerOptions().batch_size(16).teacher_cache(cache));
  t.add_callback(std::make_shared<Rec>(losses));
  t.fit(ds);
  return net;
}

void expect_same_training(const std::vector<double>& online, const std::vector<double>& cached,
                          const std::shared_ptr<NetImpl>& a, const std::shared_ptr<NetImpl>& b) {
  ASSERT_EQ(online.size(), 12u);
  ASSERT_EQ(cached.size(), 12u);
  for (size_t i = 0; i < online.size(); ++i) EXPECT_NEAR(online[i], cached[i], 1e-6) << i;
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_LT((pa[i] - pb[i]).abs().max().item<double>(), 1e-5);
}

TEST(TeacherCache, CachedTrainingEqualsOnlineTrainingStepForStep) {
  torch::manual_seed(4);
  kd::Teacher teacher(std::make_shared<NetImpl>(16));
  auto ds = data(64);
  const auto path = kd::testing::temp_dir("tcache") + "/t.cache";
  auto cache = std::shared_ptr<TeacherCache>(TeacherCache::open_or_build(path, teacher, ds, TeacherCacheOptions().hidden_states({0, 1})));
  auto kl = [] { return torch::nn::AnyModule(kd::TemperatureKL()); };
  std::vector<double> online_losses, cached_losses;
  auto a = train_student(teacher, nullptr, ds, kl, online_losses);
  auto b = train_student(teacher, cache, ds, kl, cached_losses);
  expect_same_training(online_losses, cached_losses, a, b);
}

TEST(TeacherCache, ACacheOfSomeLayersServesAFeatureLossOnThemStepForStep) {
  // Only layer 1 is stored: the lookup leaves layer 0 undefined, and training must not trip over it.
  torch::manual_seed(4);
  kd::Teacher teacher(std::make_shared<NetImpl>(16));
  auto ds = data(64);
  const auto path = kd::testing::temp_dir("tcache") + "/layer1.cache";
  auto cache = std::shared_ptr<TeacherCache>(TeacherCache::open_or_build(path, teacher, ds, TeacherCacheOptions().hidden_states({1})));
  ASSERT_FALSE(cache->lookup(torch::tensor({0}, torch::kLong)).hidden_states[0].defined());
  auto feat_kl = [] {
    torch::manual_seed(6);  // the projection's initial weights, the same in both runs
    return torch::nn::AnyModule(kd::WeightedSum(
        std::vector<kd::WeightedTerm>{{"feat", kd::FeatureL2(kd::FeatureL2Options({kd::LayerPair{1, 1, 1.0, 4, 16}}))},
                                      {"kl", kd::TemperatureKL()}}));
  };
  std::vector<double> online_losses, cached_losses;
  auto a = train_student(teacher, nullptr, ds, feat_kl, online_losses);
  auto b = train_student(teacher, cache, ds, feat_kl, cached_losses);
  expect_same_training(online_losses, cached_losses, a, b);
}

// BatchNorm ends the parameter list with a 0-dim buffer (num_batches_tracked): the fingerprint must still
// depend on every weight before it.
struct BnNetImpl : kd::Model {
  BnNetImpl() {
    fc = register_module("fc", torch::nn::Linear(6, 5));
    bn = register_module("bn", torch::nn::BatchNorm1d(5));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.logits = bn->forward(fc->forward(x));
    return out;
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

TEST(TeacherCache, TheFingerprintSeesEveryWeightEvenBeforeAScalarBuffer) {
  BnNetImpl a, b;
  {
    torch::NoGradGuard g;
    b.fc->weight.copy_(a.fc->weight);
    b.fc->bias.copy_(a.fc->bias);
  }
  EXPECT_EQ(kd::data::module_fingerprint(a), kd::data::module_fingerprint(b));
  {
    torch::NoGradGuard g;
    b.fc->weight[0][0] += 1e-3;
  }
  EXPECT_NE(kd::data::module_fingerprint(a), kd::data::module_fingerprint(b));
  auto ds = data(4), other = data(4);
  other.inputs[3][5] += 1.0;
  EXPECT_NE(kd::data::dataset_fingerprint(ds), kd::data::dataset_fingerprint(other));
}

// Attention transfer from the cache: a model whose attentions are softmax maps of its hidden states.
struct AttnNetImpl : NetImpl {
  AttnNetImpl() : NetImpl(8) {}
  kd::ModelOutput forward(const torch::Tensor& x) override {
    auto out = NetImpl::forward(x);
    for (const auto& h : out.hidden_states) out.attentions.push_back(torch::softmax(h.view({-1, 1, 2, 4}), -1));
    return out;
  }
};

TEST(TeacherCache, AttentionMapsAreStoredAtTheirTeacherPositions) {
  torch::manual_seed(6);
  kd::Teacher teacher(std::make_shared<AttnNetImpl>());
  auto ds = data(20);
  const auto path = kd::testing::temp_dir("tcache") + "/attn.cache";
  auto cache = TeacherCache::open_or_build(path, teacher, ds, TeacherCacheOptions().attentions({-1}));
  auto idx = torch::tensor({3, 19, 0}, torch::kLong);
  auto got = cache->lookup(idx);
  auto want = teacher->forward(ds.inputs.index_select(0, idx));
  ASSERT_EQ(got.attentions.size(), 2u);
  EXPECT_FALSE(got.attentions[0].defined());
  EXPECT_LT((got.attentions[1] - want.attentions[1]).abs().max().item<double>(), 1e-6);
  EXPECT_THROW(TeacherCache::open_or_build(kd::testing::temp_dir("tcache") + "/bad.cache", teacher, ds,
                                           TeacherCacheOptions().attentions({2})),
               kd::Error);  // the teacher has 2 maps
}

TEST(TeacherCache, ACacheBuiltWithOtherOptionsIsRefusedAndRebuilt) {
  torch::manual_seed(7);
  kd::Teacher teacher(std::make_shared<NetImpl>(8));
  auto ds = data(30);
  const auto path = kd::testing::temp_dir("tcache") + "/opts.cache";
  const uint32_t tfp = kd::data::module_fingerprint(*teacher->model()), dfp = kd::data::dataset_fingerprint(ds);
  TeacherCache::build(path, teacher, ds, TeacherCacheOptions().top_k(2));
  try {
    TeacherCache::open(path, tfp, dfp, TeacherCacheOptions().top_k(3).dtype(torch::kFloat16));
    FAIL() << "a cache with top_k 2 must not serve a request for top_k 3";
  } catch (const kd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stores top_k=2 dtype=float32"), std::string::npos) << what;
    EXPECT_NE(what.find("but top_k=3 dtype=float16"), std::string::npos) << what;
  }
  auto rebuilt = TeacherCache::open_or_build(path, teacher, ds, TeacherCacheOptions().top_k(3));
  EXPECT_EQ(rebuilt->top_k(), 3);
  EXPECT_EQ(TeacherCache::open(path, tfp, dfp)->top_k(), 3);  // no options asked: not checked
}

// Found by fuzz_teacher_cache: a header whose "layers" line was damaged (so the cache claimed 0 layers)
// while it listed entry hidden_states.0 made lookup() index past its layer vector. open() now checks
// each entry against the header's layer counts, and each shape against the file's length.
TEST(TeacherCache, AHeaderWhoseEntriesItsLayerCountsDoNotCoverIsRefused) {
  torch::manual_seed(8);
  kd::Teacher teacher(std::make_shared<NetImpl>(8));
  auto ds = data(12);
  const auto dir = kd::testing::temp_dir("tcache_hdr");
  const uint32_t tfp = kd::data::module_fingerprint(*teacher->model()), dfp = kd::data::dataset_fingerprint(ds);
  TeacherCache::build(dir + "/good.cache", teacher, ds, TeacherCacheOptions().hidden_states({-1}));
  std::ifstream in(dir + "/good.cache", std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_NE(good.find("\nlayers 2\n"), std::string::npos);
  ASSERT_NE(good.find("entry hidden_states.1 "), std::string::npos);
  EXPECT_NO_THROW(TeacherCache::open(dir + "/good.cache", tfp, dfp));
  // Each edit keeps the file's length, so only the header's meaning changes.
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"\nlayers 2\n", "\nlayersi2\n"},                           // the layer count lost: 0 layers
      {"entry hidden_states.1 ", "entry hidden_states.7 "},        // a layer the teacher does not have
      {"entry hidden_states.1 ", "entry hidden_statesX1 "},        // an entry build() never writes
      {"\nlayers 2\n", "\nlayers-2\n"}};                          // a negative count
  for (const auto& [from, to] : edits) {
    SCOPED_TRACE(to);
    std::string bad = good;
    bad.replace(bad.find(from), from.size(), to);
    std::ofstream(dir + "/bad.cache", std::ios::binary | std::ios::trunc) << bad;
    try {
      auto cache = TeacherCache::open(dir + "/bad.cache", tfp, dfp);
      cache->lookup(torch::tensor({0}, torch::kLong));
      FAIL() << "a damaged header was accepted";
    } catch (const kd::Error& e) {
      EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.cache"), std::string::npos) << e.what();
    }
  }
}

TEST(TeacherCache, APayloadDamagedToOtherFiniteValuesIsRefusedByChunkAndRebuilt) {
  torch::manual_seed(9);
  auto net = std::make_shared<NetImpl>(8);
  kd::Teacher teacher(net);
  auto ds = data(5000);  // two chunks of the logits: examples 0..4095 and 4096..4999
  const auto dir = kd::testing::temp_dir("tcache_crc");
  const auto path = dir + "/t.cache";
  TeacherCache::build(path, teacher, ds);
  const uint32_t tfp = kd::data::module_fingerprint(*net), dfp = kd::data::dataset_fingerprint(ds);
  const auto good = TeacherCache::open(path, tfp, dfp)->lookup(torch::arange(5000));
  // The logits (5 float32 per example) are the first entry, at the first 4096-byte boundary after the header:
  // the lowest mantissa byte (little-endian: the first) of example 4100's first logit changes; the value stays
  // finite and close.
  const std::streamoff at = 4096 + 4100 * 5 * 4;
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  const char was = static_cast<char>(f.get());
  f.seekp(at);
  f.put(static_cast<char>(was ^ 0x01));
  f.close();
  try {
    TeacherCache::open(path, tfp, dfp);
    FAIL() << "a damaged payload was accepted";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat) << e.what();
    EXPECT_NE(std::string(e.what()).find("t.cache"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("entry 'logits', examples 4096..4999, does not match its checksum"),
              std::string::npos)
        << e.what();
  }
  // open_or_build rebuilds it: the teacher's outputs again.
  const auto rebuilt = TeacherCache::open_or_build(path, teacher, ds)->lookup(torch::arange(5000));
  EXPECT_TRUE(torch::equal(rebuilt.logits, good.logits));
}

}  // namespace
