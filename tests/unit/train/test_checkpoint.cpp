#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/core/error.h"
#include "kd/train/checkpoint.h"
#include "reference.h"

namespace {
namespace fs = std::filesystem;

// A model that uses the RNG every step (dropout), so resume must restore it too.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2->forward(torch::dropout(torch::relu(fc1->forward(x)), 0.3, is_training()));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

struct TrainingRun {
  TrainingRun() : net(), opt(net->parameters(), torch::optim::AdamWOptions(1e-2)) {}
  void step(int64_t i) {
    auto x = torch::randn({8, 6});  // drawn from the global RNG
    auto y = torch::full({8}, i % 3, torch::kLong);
    auto loss = torch::cross_entropy_loss(net->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  Net net;
  torch::optim::AdamW opt;
};

TEST(Checkpoint, HalfPlusResumePlusHalfEqualsStraightRunBitForBit) {
  const int64_t n = 20;
  torch::manual_seed(1);
  TrainingRun straight;
  torch::manual_seed(42);
  for (int64_t i = 0; i < n; ++i) straight.step(i);

  const auto dir = kd::testing::temp_dir("ckpt");
  torch::manual_seed(1);
  TrainingRun first;
  torch::manual_seed(42);
  for (int64_t i = 0; i < n / 2; ++i) first.step(i);
  kd::CheckpointManager mgr{kd::CheckpointOptions(dir)};
  kd::TrainingState st;
  st.global_step = n / 2;
  st.config_fingerprint = "abc";
  mgr.save(st, {first.net.get(), nullptr, &first.opt});

  torch::manual_seed(999);  // a fresh process: different weights and RNG until restored
  TrainingRun resumed;
  auto loaded = mgr.load(*mgr.latest(), {resumed.net.get(), nullptr, &resumed.opt}, "abc");
  EXPECT_EQ(loaded.global_step, n / 2);
  for (int64_t i = loaded.global_step; i < n; ++i) resumed.step(i);

  auto a = straight.net->parameters(), b = resumed.net->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
}

TEST(Checkpoint, KeepsTheLastKAndRefusesCorruptFilesOfferingThePrevious) {
  const auto dir = kd::testing::temp_dir("ckpt");
  Net net;
  kd::CheckpointManager mgr{kd::CheckpointOptions(dir).keep_last(2)};
  kd::TrainingState st;
  for (int64_t s : {10, 20, 30}) {
    st.global_step = s;
    mgr.save(st, {net.get(), nullptr, nullptr});
  }
  auto files = mgr.list();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_NE(files[0].find("ckpt-0000000020-"), std::string::npos);
  EXPECT_NE(files[1].find("ckpt-0000000030-"), std::string::npos);

  // Truncate the newest: refused, naming it and the previous one.
  fs::resize_file(files[1], fs::file_size(files[1]) / 2);
  try {
    mgr.load(files[1], {net.get(), nullptr, nullptr});
    FAIL();
  } catch (const kd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_NE(msg.find(files[1]), std::string::npos) << msg;
    EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
    EXPECT_NE(msg.find(files[0]), std::string::npos) << msg;
  }
  // One flipped byte is caught too.
  {
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    char c;
    f.read(&c, 1);
    f.seekp(100);
    c ^= 0x40;
    f.write(&c, 1);
  }
  EXPECT_THROW(mgr.load(files[0], {net.get(), nullptr, nullptr}), kd::Error);
}

TEST(Checkpoint, DifferentFingerprintOrModelIsRefused) {
  const auto dir = kd::testing::temp_dir("ckpt");
  Net net;
  kd::CheckpointManager mgr{kd::CheckpointOptions(dir)};
  kd::TrainingState st;
  st.config_fingerprint = "one";
  const auto path = mgr.save(st, {net.get(), nullptr, nullptr});
  try {
    mgr.load(path, {net.get(), nullptr, nullptr}, "two");
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kConfig);
  }
  torch::nn::Linear other(3, 3);
  EXPECT_THROW(mgr.load(path, {other.get(), nullptr, nullptr}), kd::Error);
  EXPECT_THROW(mgr.load(dir + "/ckpt-0000000001-00000000.pt", {net.get(), nullptr, nullptr}), kd::Error);
}

// The fuzz seed `seed` copied into `dir` under the checkpoint name its CRC-32 gives (so the loader
// gets past the file checksum to the archive); returns the file's path.
std::string seed_as_checkpoint(const std::string& seed, const std::string& dir) {
  std::ifstream in(std::string(KD_SOURCE_DIR) + "/tests/fuzz/corpus/checkpoint/" + seed, std::ios::binary);
  EXPECT_TRUE(in.good()) << seed;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto crc = static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
  char name[64];
  std::snprintf(name, sizeof name, "/ckpt-0000000001-%08x.pt", crc);
  std::ofstream(dir + name, std::ios::binary) << bytes;
  return dir + name;
}

// Found by fuzz_checkpoint. damaged-type-name.pt: LibTorch threw torch::jit::ErrorReport (not a
// c10::Error), which once escaped the loader and ended the process. damaged-code-entry.pt: a damaged
// code/ entry crashed LibTorch 1.13's TorchScript parser (SEGV) before kd::find_archive_damage was
// checked first. Python's zipfile, reading its entries in directory order, finds four with a wrong
// CRC-32, the first archive/data/3 (then three code/ entries). Each file is named with its own
// CRC-32, so the loader gets past the file checksum to the archive inside.
TEST(Checkpoint, DamagedArchivesTheFuzzerFoundAreRefusedWithAKdError) {
  for (const std::string seed : {"damaged-type-name.pt", "damaged-code-entry.pt"}) {
    SCOPED_TRACE(seed);
    const auto path = seed_as_checkpoint(seed, kd::testing::temp_dir("ckpt_damaged"));
    Net net;
    kd::CheckpointManager mgr{kd::CheckpointOptions(std::filesystem::path(path).parent_path().string())};
    try {
      mgr.load(path, {net.get(), nullptr, nullptr});
      FAIL() << "a damaged archive was loaded";
    } catch (const kd::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::filesystem::path(path).filename().string()), std::string::npos)
          << e.what();  // names the file
      if (seed == "damaged-code-entry.pt") {
        EXPECT_NE(std::string(e.what()).find("entry 'archive/data/3' fails its CRC-32"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Checkpoint, ATensorWithoutItsDataIsRefusedAndTheModelKeepsItsWeights) {
  // fuzz_checkpoint's find: a valid archive whose fc.weight record gives a shape its data does not
  // fill. LibTorch's Module::load would take it and leave a weight that fails on first use.
  struct Tiny : torch::nn::Module {
    Tiny() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
    torch::nn::Linear fc{nullptr};
  };
  const auto dir = kd::testing::temp_dir("ckpt_unallocated");
  const auto path = seed_as_checkpoint("unallocated-weight.pt", dir);
  Tiny model;
  const auto before = model.fc->weight.clone();
  kd::CheckpointManager mgr{kd::CheckpointOptions(dir)};
  try {
    mgr.load(path, {&model, nullptr, nullptr});
    FAIL() << "a tensor without its data was loaded";
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'student.fc."), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::equal(model.fc->weight, before));
  EXPECT_EQ(model.fc->forward(torch::zeros({1, 3})).sizes(), (std::vector<int64_t>{1, 2}));
}

}  // namespace

TEST(Checkpoint, AFullDiskFailsTheSaveCleanlyAndLeavesTheLastCheckpointWhole) {
  // A tiny tmpfs holds the folder; a filler file then takes all its space. Needs mount rights (root).
  const auto dir = kd::testing::temp_dir("ckpt_full");
  if (std::system(("mount -t tmpfs -o size=256k tmpfs " + dir + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root): the full-disk case is not exercised";
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { std::system(("umount " + dir).c_str()); }
  } unmount{dir};
  Net net;
  kd::CheckpointManager mgr{kd::CheckpointOptions(dir).keep_last(3)};
  kd::TrainingState st;
  st.global_step = 1;
  const auto first = mgr.save(st, {net.get(), nullptr, nullptr});
  {
    std::ofstream filler(dir + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    while (filler.write(block.data(), block.size())) {}
  }
  st.global_step = 2;
  try {
    mgr.save(st, {net.get(), nullptr, nullptr});
    FAIL() << "saving onto a full disk must fail";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile) << e.what();
  }
  ASSERT_EQ(mgr.list(), std::vector<std::string>{first});
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    EXPECT_TRUE(name == "filler" || name.rfind("ckpt-", 0) == 0) << "left behind: " << name;
  }
  Net restored;
  EXPECT_EQ(mgr.load(first, {restored.get(), nullptr, nullptr}).global_step, 1);
}
