#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <zlib.h>

#include "kd/io/atomic_file.h"
#include "kd/detail/file_sync.h"
#include "kd/core/error.h"
#include "reference.h"

namespace {
namespace fs = std::filesystem;

std::string slurp(const std::string& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(AtomicFile, ReplacesTheFileAndLeavesNoTemporary) {
  const auto dir = kd::testing::temp_dir("atomic");
  const auto path = dir + "/out.txt";
  kd::write_atomically(path, [](const std::string& tmp) { std::ofstream(tmp) << "first"; });
  kd::write_atomically(path, [](const std::string& tmp) { std::ofstream(tmp) << "second"; });
  EXPECT_EQ(slurp(path), "second");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(AtomicFile, AFailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  const auto dir = kd::testing::temp_dir("atomic");
  const auto path = dir + "/ckpt.bin";
  kd::write_atomically(path, [](const std::string& tmp) { std::ofstream(tmp) << "good"; });
  try {
    kd::write_atomically(path, [](const std::string& tmp) {
      std::ofstream(tmp) << "half";
      throw std::runtime_error("disk full");
    });
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find("disk full"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ckpt.bin"), std::string::npos) << e.what();
  }
  EXPECT_EQ(slurp(path), "good");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  EXPECT_THROW(kd::write_atomically(dir + "/no/such/folder/x", [](const std::string&) {}), kd::Error);
}

TEST(AtomicFile, Crc32MatchesZlibOnKnownInput) {
  const auto dir = kd::testing::temp_dir("atomic");
  std::ofstream(dir + "/a") << "123456789";
  EXPECT_EQ(kd::detail::file_crc32(dir + "/a"), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_THROW(kd::detail::file_crc32(dir + "/missing"), kd::Error);
}

}  // namespace
