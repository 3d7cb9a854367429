#include <fstream>

#include <gtest/gtest.h>
#include <zlib.h>

#include "kd/core/error.h"
#include "kd/data/idx.h"
#include "reference.h"

namespace {

std::string idx_bytes(std::vector<uint32_t> dims, const std::vector<uint8_t>& data) {
  std::string b = {0, 0, 8, static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<char>((d >> shift) & 0xff));
  }
  b.append(data.begin(), data.end());
  return b;
}

std::string expect_error(const std::string& bytes, kd::ErrorCategory category) {
  try {
    kd::data::parse_idx(bytes, "sample.idx");
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), category);
    return e.what();
  }
  ADD_FAILURE() << "expected kd::Error";
  return "";
}

TEST(Idx, ParsesShapeAndBigEndianSizes) {
  std::vector<uint8_t> data(2 * 3 * 300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  auto t = kd::data::parse_idx(idx_bytes({2, 3, 300}, data), "x");
  EXPECT_EQ(t.sizes(), torch::IntArrayRef({2, 3, 300}));
  EXPECT_EQ(t.scalar_type(), torch::kUInt8);
  EXPECT_EQ(t[1][2][299].item<int>(), static_cast<uint8_t>((2 * 3 * 300 - 1) * 7));
}

// Found by fuzz_idx under UBSan: a zero-length dimension once reached memcpy with an empty tensor's
// null data pointer. It is a valid, empty file.
TEST(Idx, AZeroLengthDimensionGivesAnEmptyTensor) {
  auto t = kd::data::parse_idx(idx_bytes({0, 28, 28}, {}), "empty.idx");
  EXPECT_EQ(t.sizes(), torch::IntArrayRef({0, 28, 28}));
  EXPECT_EQ(t.numel(), 0);
}

TEST(Idx, RejectsBadInputWithAClearMessage) {
  auto msg = expect_error(idx_bytes({4}, {1, 2, 3}), kd::ErrorCategory::kFormat);
  EXPECT_NE(msg.find("promises 4 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds 3"), std::string::npos) << msg;
  expect_error("\x01\x02\x08\x01", kd::ErrorCategory::kFormat);
  msg = expect_error(std::string("\0\0\x0d\x01", 4) + std::string(4, '\0'), kd::ErrorCategory::kFormat);
  EXPECT_NE(msg.find("0x0d"), std::string::npos) << msg;
  expect_error(std::string("\0\0\x08\x03\0\0", 6), kd::ErrorCategory::kFormat);
  expect_error("", kd::ErrorCategory::kFormat);
}

TEST(Idx, ReadsGzipAndPlainFilesAndNamesMissingOnes) {
  const std::string dir = kd::testing::temp_dir("idx");
  const auto bytes = idx_bytes({2, 2}, {9, 8, 7, 6});
  std::ofstream(dir + "/plain.idx", std::ios::binary) << bytes;
  gzFile gz = gzopen((dir + "/packed.idx.gz").c_str(), "wb");
  gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(gz);
  auto a = kd::data::read_idx(dir + "/plain.idx");
  auto b = kd::data::read_idx(dir + "/packed.idx.gz");
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_EQ(b[1][0].item<int>(), 7);
  try {
    kd::data::read_idx(dir + "/missing.gz");
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find("missing.gz"), std::string::npos);
  }
}

}  // namespace
