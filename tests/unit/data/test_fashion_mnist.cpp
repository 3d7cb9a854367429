// Reads the real Fashion-MNIST files that scripts/test installs (dataset-fashion-mnist).
#include <filesystem>
#include <set>

#include <gtest/gtest.h>
#include <zlib.h>

#include "kd/core/error.h"
#include "kd/data/fashion_mnist.h"
#include "kd/data/idx.h"
#include "reference.h"

namespace {
using kd::data::Split;

TEST(FashionMnist, SplitsHaveTheDocumentedSizesAndAreDisjointAndDeterministic) {
  auto opts = kd::data::FashionMnistOptions();
  auto train = kd::data::load_fashion_mnist(Split::kTrain, opts);
  auto val = kd::data::load_fashion_mnist(Split::kValidation, opts);
  auto test = kd::data::load_fashion_mnist(Split::kTest, opts);
  EXPECT_EQ(train.size(), 55000);
  EXPECT_EQ(val.size(), 5000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.inputs.sizes(), torch::IntArrayRef({55000, 1, 28, 28}));
  EXPECT_EQ(test.targets.scalar_type(), torch::kInt64);
  // Ten balanced classes in the test set: 1000 each (published property of the data set).
  auto counts = torch::bincount(test.targets);
  EXPECT_TRUE(torch::equal(counts, torch::full({10}, 1000, torch::kInt64)));
  // Normalisation constants are the training set's: mean ≈ 0, std ≈ 1 on the 60k images.
  auto all = torch::cat({train.inputs, val.inputs});
  EXPECT_NEAR(all.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(all.std().item<double>(), 1.0, 0.01);

  auto val_again = kd::data::load_fashion_mnist(Split::kValidation, opts);
  EXPECT_TRUE(torch::equal(val.inputs, val_again.inputs));
  auto other = kd::data::load_fashion_mnist(Split::kValidation, kd::data::FashionMnistOptions().split_seed(1));
  EXPECT_FALSE(torch::equal(val.targets, other.targets));

  // Train + validation is a partition of the 60 000 raw training images: the
  // multiset of images (keyed by a random projection of their exact bytes) is the same.
  auto raw = kd::data::read_idx(opts.root() + "/train-images-idx3-ubyte.gz").flatten(1).to(torch::kFloat64);
  auto proj = torch::rand({784}, torch::TensorOptions(torch::kFloat64));
  auto pixels = [](const torch::Tensor& x) { return torch::round((x.to(torch::kFloat64) * 0.3530 + 0.2860) * 255.0); };
  auto split_keys = std::get<0>(torch::sort(torch::mv(pixels(all).flatten(1), proj)));
  auto raw_keys = std::get<0>(torch::sort(torch::mv(raw, proj)));
  EXPECT_TRUE(torch::allclose(split_keys, raw_keys, 0, 1e-6));
}

TEST(FashionMnist, LimitAndMissingFolder) {
  auto small = kd::data::load_fashion_mnist(Split::kTest, kd::data::FashionMnistOptions().limit(100));
  EXPECT_EQ(small.size(), 100);
  try {
    kd::data::load_fashion_mnist(Split::kTrain, kd::data::FashionMnistOptions().root("/nonexistent/fmnist"));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find("apt-get install dataset-fashion-mnist"), std::string::npos);
  }
  EXPECT_THROW(kd::data::load_fashion_mnist(Split::kTrain, kd::data::FashionMnistOptions().validation_size(60000)),
               kd::Error);
}

// A label outside the ten classes is refused when the split loads, naming the labels file and the example,
// in the test split as in the others (it would otherwise surface only when the test set is scored).
TEST(FashionMnist, ALabelOutsideTheClassesIsRefusedNamingTheFile) {
  const auto root = kd::testing::temp_dir("fmnist_bad_labels");
  std::filesystem::copy_file(kd::data::FashionMnistOptions().root() + "/t10k-images-idx3-ubyte.gz",
                             root + "/t10k-images-idx3-ubyte.gz");
  std::vector<unsigned char> bytes = {0, 0, 8, 1, 0, 0, 0x27, 0x10};  // IDX1 of uint8, 10 000 labels
  for (int i = 0; i < 10000; ++i) bytes.push_back(static_cast<unsigned char>(i % 10));
  bytes[8 + 4321] = 12;
  const auto labels = root + "/t10k-labels-idx1-ubyte.gz";
  gzFile gz = gzopen(labels.c_str(), "wb");
  gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(gz);
  try {
    kd::data::load_fashion_mnist(Split::kTest, kd::data::FashionMnistOptions().root(root));
    FAIL() << "label 12 accepted";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_NE(std::string(e.what()).find("'" + labels + "': label 12 of example 4321 is not a class in [0, 10) (1 such"),
              std::string::npos)
        << e.what();
  }
}

TEST(EpochOrder, IsAPermutationThatDependsOnSeedAndEpoch) {
  auto a = kd::data::epoch_order(1000, 7, 0);
  auto b = kd::data::epoch_order(1000, 7, 0);
  auto c = kd::data::epoch_order(1000, 7, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::set<int64_t> s(a.begin(), a.end());
  EXPECT_EQ(s.size(), 1000u);
  EXPECT_EQ(*s.begin(), 0);
  EXPECT_EQ(*s.rbegin(), 999);
  auto plain = kd::data::epoch_order(5, 7, 3, /*shuffle=*/false);
  EXPECT_EQ(plain, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

}  // namespace
