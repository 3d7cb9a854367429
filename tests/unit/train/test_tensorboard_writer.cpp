// TensorBoard event files: CRC-32C against the published check values, and one record's bytes against the
// TFRecord framing and the protobuf wire encoding written out by hand.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/train/tensorboard_writer.h"
#include "reference.h"

namespace {

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint64_t le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

TEST(TensorBoardWriter, Crc32cMatchesTheCheckValues) {
  // "123456789" is the CRC catalogue's check string; 32 zero / 0xFF bytes are RFC 3720's (iSCSI) vectors.
  EXPECT_EQ(kd::crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xFF');
  EXPECT_EQ(kd::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(kd::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(kd::crc32c("", 0), 0u);
  // Masking (rotate right by 15, add 0xA282EAD8) of the check value, computed apart from this code: 0xc78ab0e5.
  EXPECT_EQ(kd::masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

TEST(TensorBoardWriter, WritesFramedEventsTensorBoardReads) {
  const auto dir = kd::testing::temp_dir("tensorboard") + "/run";
  std::string path;
  {
    kd::TensorBoardWriter tb(dir);
    path = tb.path();
    tb.add_scalars(3, {{"a", 1.5}});
  }
  EXPECT_EQ(std::filesystem::path(path).parent_path(), std::filesystem::path(dir));
  EXPECT_EQ(std::filesystem::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u);
  const std::string file = bytes_of(path);

  // Record 1: Event{wall_time (field 1, fixed64), file_version (field 3) = "brain.Event:2"}.
  size_t at = 0;
  const uint64_t n1 = le(file, at, 8);
  EXPECT_EQ(le(file, at + 8, 4), kd::masked_crc32c(file.data() + at, 8));
  const std::string e1 = file.substr(at + 12, n1);
  EXPECT_EQ(le(file, at + 12 + n1, 4), kd::masked_crc32c(e1.data(), e1.size()));
  EXPECT_EQ(e1.size(), 9u + 2 + 13);
  EXPECT_EQ(static_cast<unsigned char>(e1[0]), 0x09);  // field 1, wire type 1 (64-bit)
  EXPECT_EQ(e1.substr(9), std::string("\x1a\x0d" "brain.Event:2", 15));
  at += 16 + n1;

  // Record 2: Event{wall_time, step (field 2, varint) = 3, summary (field 5) = Summary{value (field 1) =
  // Value{tag (1) = "a", simple_value (2, fixed32) = 1.5f = 0x3FC00000}}}.
  const uint64_t n2 = le(file, at, 8);
  EXPECT_EQ(le(file, at + 8, 4), kd::masked_crc32c(file.data() + at, 8));
  const std::string e2 = file.substr(at + 12, n2);
  EXPECT_EQ(le(file, at + 12 + n2, 4), kd::masked_crc32c(e2.data(), e2.size()));
  const std::string expected("\x10\x03"              // step 3
                             "\x2a\x0a"              // summary, 10 bytes
                             "\x0a\x08"              // value, 8 bytes
                             "\x0a\x01" "a"          // tag "a"
                             "\x15\x00\x00\xc0\x3f",  // simple_value 1.5f
                             14);
  ASSERT_EQ(e2.size(), 9u + expected.size());
  EXPECT_EQ(static_cast<unsigned char>(e2[0]), 0x09);
  EXPECT_EQ(e2.substr(9), expected);
  EXPECT_EQ(at + 16 + n2, file.size());  // nothing after the last record
}

TEST(TensorBoardWriter, SessionStartMarksAResumedRun) {
  const auto dir = kd::testing::temp_dir("tensorboard_start");
  std::string path;
  {
    kd::TensorBoardWriter tb(dir);
    path = tb.path();
    tb.add_session_start(8);
  }
  const std::string file = bytes_of(path);
  const size_t second = 16 + le(file, 0, 8);
  const std::string e = file.substr(second + 12, le(file, second, 8));
  // step 8, session_log (field 6) = SessionLog{status (1) = START (1)}.
  EXPECT_EQ(e.substr(9), std::string("\x10\x08\x32\x02\x08\x01", 6));
}

TEST(TensorBoardWriter, AFolderThatCannotBeMadeIsNamed) {
  const auto dir = kd::testing::temp_dir("tensorboard_blocked");
  std::ofstream(dir + "/file") << "x";
  try {
    kd::TensorBoardWriter tb(dir + "/file/run");
    FAIL() << "a folder under a file was accepted";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find(dir + "/file/run"), std::string::npos) << e.what();
  }
}

}  // namespace
