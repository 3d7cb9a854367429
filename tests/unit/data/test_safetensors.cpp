// kd::data safetensors reader and writer, against bytes written out by hand, against files written and read
// by hand in Python (tests/parity/safetensors_files.py, with torch's tensors as the reference), and round trips.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/data/safetensors.h"
#include "reference.h"

namespace {

using kd::ErrorCategory;
using kd::testing::expect_kd_error;

// 8-byte little-endian header length, the header text, the data buffer.
std::string st_bytes(const std::string& header, const std::string& data = "") {
  std::string b;
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((uint64_t(header.size()) >> (8 * i)) & 0xff));
  return b + header + data;
}

std::string bytes(std::initializer_list<int> values) {
  std::string b;
  for (int v : values) b.push_back(static_cast<char>(v));
  return b;
}

kd::data::SafetensorsFile parse(const std::string& b, const std::string& source = "model.safetensors") {
  return kd::data::parse_safetensors(reinterpret_cast<const uint8_t*>(b.data()), b.size(), source);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// (a) An independent reference: the header and every byte of the data written out by hand.
TEST(Safetensors, ParsesHandWrittenBytesToKnownValues) {
  const std::string header =
      R"({"__metadata__":{"format":"pt","step":"7"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"I64","shape":[1,2],"data_offsets":[8,24]},)"
      R"("c":{"dtype":"U16","shape":[2],"data_offsets":[24,28]},)"
      R"("d":{"dtype":"BF16","shape":[],"data_offsets":[28,30]},)"
      R"("e":{"dtype":"F16","shape":[1],"data_offsets":[30,32]},)"
      R"("f":{"dtype":"U32","shape":[1],"data_offsets":[32,36]},)"
      R"("g":{"dtype":"BOOL","shape":[2],"data_offsets":[36,38]},)"
      R"("h":{"dtype":"I8","shape":[1],"data_offsets":[38,39]},)"
      R"("i":{"dtype":"U8","shape":[1],"data_offsets":[39,40]},)"
      R"("j":{"dtype":"I16","shape":[1],"data_offsets":[40,42]},)"
      R"("k":{"dtype":"I32","shape":[1],"data_offsets":[42,46]},)"
      R"("l":{"dtype":"F64","shape":[1],"data_offsets":[46,54]},)"
      R"("z":{"dtype":"F32","shape":[0,4],"data_offsets":[54,54]}})";
  const std::string data = bytes({0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0,           // F32 1.5, -2
                                  0x07, 0, 0, 0, 0, 0, 0, 0,                                // I64 7
                                  0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,           // I64 -3
                                  0xFF, 0xFF, 0x01, 0x00,                                   // U16 65535, 1
                                  0xC0, 0x3F,                                               // BF16 0x3FC0 = 1.5
                                  0x00, 0x3E,                                               // F16 0x3E00 = 1.5
                                  0xFF, 0xFF, 0xFF, 0xFF,                                   // U32 4294967295
                                  0x01, 0x00,                                               // BOOL true, false
                                  0xFF,                                                     // I8 -1
                                  0xFF,                                                     // U8 255
                                  0xFE, 0xFF,                                               // I16 -2
                                  0x00, 0x00, 0x00, 0x80,                                   // I32 -2^31
                                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xE0, 0xBF});         // F64 -0.5
  const auto f = parse(st_bytes(header, data));
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"step", "7"}}));
  ASSERT_EQ(f.tensors.size(), 13u);
  const auto& t = f.tensors;
  EXPECT_EQ(t.at("a").scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(t.at("a"), torch::tensor({1.5f, -2.0f})));
  EXPECT_EQ(t.at("b").scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(t.at("b"), torch::tensor({int64_t{7}, int64_t{-3}}).reshape({1, 2})));
  EXPECT_EQ(t.at("c").scalar_type(), torch::kInt32);  // U16 widened
  EXPECT_TRUE(torch::equal(t.at("c"), torch::tensor({65535, 1}, torch::kInt32)));
  EXPECT_EQ(t.at("d").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(t.at("d").dim(), 0);
  EXPECT_EQ(t.at("d").item<float>(), 1.5f);
  EXPECT_EQ(t.at("e").scalar_type(), torch::kFloat16);
  EXPECT_EQ(t.at("e")[0].item<float>(), 1.5f);
  EXPECT_EQ(t.at("f").scalar_type(), torch::kInt64);  // U32 widened
  EXPECT_EQ(t.at("f")[0].item<int64_t>(), 4294967295LL);
  EXPECT_EQ(t.at("g").scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(t.at("g"), torch::tensor({true, false})));
  EXPECT_EQ(t.at("h").scalar_type(), torch::kInt8);
  EXPECT_EQ(t.at("h")[0].item<int>(), -1);
  EXPECT_EQ(t.at("i").scalar_type(), torch::kUInt8);
  EXPECT_EQ(t.at("i")[0].item<int>(), 255);
  EXPECT_EQ(t.at("j").scalar_type(), torch::kInt16);
  EXPECT_EQ(t.at("j")[0].item<int>(), -2);
  EXPECT_EQ(t.at("k").scalar_type(), torch::kInt32);
  EXPECT_EQ(t.at("k")[0].item<int64_t>(), -2147483648LL);
  EXPECT_EQ(t.at("l").scalar_type(), torch::kFloat64);
  EXPECT_EQ(t.at("l")[0].item<double>(), -0.5);
  EXPECT_EQ(t.at("z").sizes(), torch::IntArrayRef({0, 4}));
}

// The tensors own their memory: they outlive the bytes they were parsed from.
TEST(Safetensors, ParsedTensorsOwnTheirMemory) {
  auto b = st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", bytes({0, 0, 0xC0, 0x3F}));
  auto f = parse(b);
  std::memset(b.data(), 0, b.size());
  b.clear();
  b.shrink_to_fit();
  EXPECT_EQ(f.tensors.at("a")[0].item<float>(), 1.5f);
}

// The writer's bytes, checked against the layout written out by hand: compact JSON, "__metadata__" first,
// names sorted, offsets back to back, the header padded with spaces to a multiple of 8.
TEST(Safetensors, WritesTheReferenceLayout) {
  const std::string dir = kd::testing::temp_dir("safetensors");
  kd::data::write_safetensors(dir + "/w.safetensors",
                              {{"b", torch::tensor({1.5f, -2.0f})}, {"a", torch::tensor({7}, torch::kInt16)}},
                              {{"k", "v"}});
  const std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"I16","shape":[1],"data_offsets":[0,2]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  EXPECT_EQ(read_file(dir + "/w.safetensors"),
            st_bytes(padded, bytes({0x07, 0x00, 0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0})));
}

// (b) Python writes a file by hand; every value read equals torch's, and a file written from what was read
// is read back by hand in Python with the same values (U16/U32 then stored as I32/I64).
TEST(Safetensors, AgreesWithPythonInBothDirections) {
  if (::access(KD_PYTHON, X_OK) != 0) GTEST_SKIP() << KD_PYTHON << " is missing";
  if (std::system((std::string(KD_PYTHON) + " -c 'import torch, numpy' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << KD_PYTHON << " has no torch or numpy";
  }
  const std::string dir = kd::testing::run_python("safetensors_files.py");
  const kd::testing::Reference ref(dir + "/python.json");
  const auto f = kd::data::read_safetensors(dir + "/python.safetensors");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  const std::map<std::string, torch::ScalarType> types = {
      {"bool", torch::kBool},   {"u8", torch::kUInt8},       {"i8", torch::kInt8},     {"i16", torch::kInt16},
      {"i32", torch::kInt32},   {"i64", torch::kInt64},      {"f16", torch::kFloat16}, {"bf16", torch::kBFloat16},
      {"f32", torch::kFloat32}, {"f64", torch::kFloat64},    {"empty", torch::kFloat32}, {"scalar", torch::kFloat64},
      {"u16", torch::kInt32},   {"u32", torch::kInt64}};
  ASSERT_EQ(f.tensors.size(), types.size());
  for (const auto& [name, type] : types) {
    const auto& t = f.tensors.at(name);
    EXPECT_EQ(t.scalar_type(), type) << name;
    const auto expected = ref[name];
    EXPECT_EQ(t.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(torch::equal(t.to(expected.scalar_type()), expected)) << name << ": " << t << " against " << expected;
  }
  kd::data::write_safetensors(dir + "/cpp.safetensors", f.tensors, f.metadata);
  kd::testing::run_python("safetensors_files.py", {"check", dir + "/cpp.safetensors"});
}

// (c) Round trips: every dtype, a zero-size and a scalar tensor, non-contiguous input, metadata.
TEST(Safetensors, RoundTripsEveryDtype) {
  const std::string dir = kd::testing::temp_dir("safetensors");
  torch::manual_seed(0);
  const auto x = torch::randn({3, 5}, torch::kFloat64) * 1000;
  std::map<std::string, torch::Tensor> in = {
      {"bool", x > 0},
      {"u8", x.abs().remainder(256).to(torch::kUInt8)},
      {"i8", x.remainder(128).to(torch::kInt8)},
      {"i16", x.to(torch::kInt16)},
      {"i32", (x * 1000).to(torch::kInt32)},
      {"i64", (x * 1e12).to(torch::kInt64)},
      {"f16", x.to(torch::kFloat16)},
      {"bf16", x.to(torch::kBFloat16)},
      {"f32", x.to(torch::kFloat32)},
      {"f64", x},
      {"transposed", x.t()},  // not contiguous
      {"zero_size", torch::empty({2, 0, 3}, torch::kFloat32)},
      {"scalar", torch::tensor(3.25)},
      {"scalar_i64", torch::tensor(int64_t{-9})},
      {"with.dots/and slashes", torch::arange(4)},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"unicode", "äöü ✓"}, {"empty", ""}};
  kd::data::write_safetensors(dir + "/all.safetensors", in, meta);
  const auto out = kd::data::read_safetensors(dir + "/all.safetensors");
  EXPECT_EQ(out.metadata, meta);
  ASSERT_EQ(out.tensors.size(), in.size());
  for (const auto& [name, t] : in) {
    const auto& r = out.tensors.at(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(r.sizes(), t.sizes()) << name;
    EXPECT_TRUE(r.is_contiguous()) << name;
    EXPECT_TRUE(torch::equal(r, t)) << name;
  }
  // Without metadata, and with no tensors at all.
  kd::data::write_safetensors(dir + "/none.safetensors", {});
  const auto none = kd::data::read_safetensors(dir + "/none.safetensors");
  EXPECT_TRUE(none.tensors.empty());
  EXPECT_TRUE(none.metadata.empty());
  EXPECT_EQ(read_file(dir + "/none.safetensors"), st_bytes("{}      "));
}

TEST(Safetensors, WriterRefusesWhatItCannotStore) {
  const std::string dir = kd::testing::temp_dir("safetensors");
  const std::string path = dir + "/x.safetensors";
  expect_kd_error([&] { kd::data::write_safetensors(path, {{"c", torch::zeros({2}, torch::kComplexFloat)}}); },
                  ErrorCategory::kValue, {path, "'c'", "ComplexFloat", "float32"});
  expect_kd_error([&] { kd::data::write_safetensors(path, {{"u", torch::Tensor()}}); }, ErrorCategory::kValue,
                  {"'u'", "undefined"});
  expect_kd_error([&] { kd::data::write_safetensors(path, {{"__metadata__", torch::zeros({1})}}); },
                  ErrorCategory::kValue, {"reserved"});
  expect_kd_error([&] { kd::data::write_safetensors(path, {{"s", torch::zeros({2, 2}).to_sparse()}}); },
                  ErrorCategory::kValue, {"'s'", "dense"});
  expect_kd_error([&] { kd::data::write_safetensors(path, {{"bad\xff", torch::zeros({1})}}); }, ErrorCategory::kValue,
                  {"UTF-8"});
  expect_kd_error([&] { kd::data::write_safetensors(dir + "/no/such/dir/x.safetensors", {}); }, ErrorCategory::kFile,
                  {"no/such/dir"});
  EXPECT_FALSE(std::ifstream(path).good());  // nothing half-written left
}

// (d) One test per refusal: the category, and a message that names the file and the tensor.
TEST(Safetensors, RefusesAMissingFileNamingIt) {
  const std::string path = kd::testing::temp_dir("safetensors") + "/missing.safetensors";
  expect_kd_error([&] { kd::data::read_safetensors(path); }, ErrorCategory::kFile, {path, "does not exist"});
}

TEST(Safetensors, RefusesAFileShorterThan8Bytes) {
  expect_kd_error([&] { parse(bytes({1, 0, 0})); }, ErrorCategory::kFormat, {"model.safetensors", "3 bytes"});
  const std::string path = kd::testing::temp_dir("safetensors") + "/empty.safetensors";
  std::ofstream(path).close();
  expect_kd_error([&] { kd::data::read_safetensors(path); }, ErrorCategory::kFormat, {path, "0 bytes"});
}

TEST(Safetensors, RefusesAHeaderLengthBeyondTheFile) {
  auto b = st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})");
  b[0] = static_cast<char>(200);  // claims 200 bytes; 56 follow
  expect_kd_error([&] { parse(b); }, ErrorCategory::kFormat,
                  {"model.safetensors", "200", std::to_string(b.size() - 8)});
}

TEST(Safetensors, RefusesAHeaderLengthBeyond100MB) {
  std::string b = bytes({0x01, 0xE1, 0xF5, 0x05, 0, 0, 0, 0}) + "{}";  // 100,000,001
  expect_kd_error([&] { parse(b); }, ErrorCategory::kFormat, {"model.safetensors", "100000001", "100 MB"});
}

TEST(Safetensors, RefusesAHeaderThatIsNotJson) {
  expect_kd_error([&] { parse(st_bytes(R"({"a": {"dtype": )")); }, ErrorCategory::kFormat,
                  {"model.safetensors", "not valid UTF-8 JSON"});
  expect_kd_error([&] { parse(st_bytes("{\"a\xff\":1}")); }, ErrorCategory::kFormat, {"not valid UTF-8 JSON"});
}

TEST(Safetensors, RefusesAHeaderThatIsNotAnObject) {
  expect_kd_error([&] { parse(st_bytes("[1, 2]")); }, ErrorCategory::kFormat, {"model.safetensors", "array"});
}

TEST(Safetensors, RefusesAnEntryThatIsNotAnObject) {
  expect_kd_error([&] { parse(st_bytes(R"({"w": [1, 2]})")); }, ErrorCategory::kFormat,
                  {"model.safetensors", "'w'", "not an object"});
}

TEST(Safetensors, RefusesAnEntryLackingAField) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "lacks \"dtype\""});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"'w'", "lacks \"shape\""});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[1]}})", "abcd")); }, ErrorCategory::kFormat,
                  {"'w'", "lacks \"data_offsets\""});
}

TEST(Safetensors, RefusesFieldsOfTheWrongType) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "\"dtype\"", "not a string"});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"'w'", "\"shape\"", "not an array"});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"'w'", "\"shape\"", "not a non-negative integer"});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd")); },
                  ErrorCategory::kFormat, {"'w'", "\"data_offsets\"", "two non-negative integers"});
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "abcd")); },
                  ErrorCategory::kFormat, {"'w'", "\"data_offsets\""});
  expect_kd_error([&] { parse(st_bytes(R"({"__metadata__":{"n":1}})")); }, ErrorCategory::kFormat,
                  {"model.safetensors", "__metadata__", "'n'", "strings"});
  expect_kd_error([&] { parse(st_bytes(R"({"__metadata__":[]})")); }, ErrorCategory::kFormat,
                  {"__metadata__", "not an object"});
}

TEST(Safetensors, RefusesUnsupportedDtypesNamingWhatIsSupported) {
  for (const std::string dtype : {"U64", "F8_E4M3", "F8_E5M2", "Q4"}) {
    const auto header = R"({"w":{"dtype":")" + dtype + R"(","shape":[1],"data_offsets":[0,8]}})";
    expect_kd_error([&] { parse(st_bytes(header, std::string(8, '\0'))); }, ErrorCategory::kFormat,
                    {"model.safetensors", "'w'", "'" + dtype + "'", "BOOL, U8, I8, I16, U16, I32, U32, I64, F16"});
  }
}

TEST(Safetensors, RefusesANegativeDimension) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "negative dimension -1"});
}

TEST(Safetensors, RefusesAShapeWhoseElementCountOverflows) {
  // 2^32 * 2^32 overflows a 64-bit count; so does a stride product even when a 0 makes the count 0.
  expect_kd_error(
      [&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})")); },
      ErrorCategory::kFormat, {"model.safetensors", "'w'", "more elements"});
  expect_kd_error(
      [&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})")); },
      ErrorCategory::kFormat, {"'w'", "more elements"});
  // numel fits but numel x 8 bytes does not.
  expect_kd_error(
      [&] { parse(st_bytes(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})")); },
      ErrorCategory::kFormat, {"'w'", "needs"});
  expect_kd_error(
      [&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}})")); },
      ErrorCategory::kFormat, {"'w'", "more elements"});
}

TEST(Safetensors, RefusesDataOffsetsThatEndBeforeTheyBegin) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "[4, 2]", "end before they begin"});
}

TEST(Safetensors, RefusesDataOffsetsBeyondTheBuffer) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "[0, 8]", "data buffer of 4 bytes"});
}

TEST(Safetensors, RefusesDataOffsetsOfTheWrongLength) {
  expect_kd_error([&] { parse(st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "'w'", "needs 2 x 4 bytes", "hold 4 bytes"});
}

TEST(Safetensors, RefusesOverlapsHolesAndTrailingBytes) {
  expect_kd_error(
      [&] {
        parse(st_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                       "abcd"));
      },
      ErrorCategory::kFormat, {"model.safetensors", "'b'", "overlaps tensor 'a'"});
  expect_kd_error(
      [&] {
        parse(st_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                       R"("b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}})",
                       "abcd"));
      },
      ErrorCategory::kFormat, {"model.safetensors", "[2, 3)", "'b'", "no tensor"});
  expect_kd_error([&] { parse(st_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "abcd")); },
                  ErrorCategory::kFormat, {"model.safetensors", "holds 4 bytes", "only the first 2"});
  // Zero-size tensors anywhere in the buffer's order are fine, as in the reference.
  const auto f = parse(st_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                R"("z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
                                R"("y":{"dtype":"I64","shape":[3,0],"data_offsets":[0,0]}})",
                                "ab"));
  EXPECT_EQ(f.tensors.at("y").sizes(), torch::IntArrayRef({3, 0}));
}

TEST(Safetensors, RefusesBoolBytesOtherThan0And1) {
  const auto header = R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})";
  expect_kd_error([&] { parse(st_bytes(header, bytes({1, 0, 2}))); }, ErrorCategory::kFormat,
                  {"model.safetensors", "'m'", "byte 2 at element 2"});
}

}  // namespace
