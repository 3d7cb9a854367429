#include "kd/quant/int8_file.h"

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/io/atomic_file.h"
#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::qat {
namespace {

constexpr std::array<char, 8> kMagic = {'K', 'D', 'Q', 'I', 'N', 'T', '8', '\n'};
constexpr size_t kHeaderBytes = 40;
constexpr uint8_t kFlagSymmetric = 1, kFlagZeroPoints = 2;
constexpr uint64_t kMaxDims = 8;

// Our own dtype codes: the file must not depend on c10's enum values.
struct Dtype {
  uint8_t code;
  torch::ScalarType type;
  size_t bytes;
  const char* name;
};
constexpr Dtype kDtypes[] = {
    {1, torch::kInt8, 1, "int8"},   {2, torch::kUInt8, 1, "uint8"},     {3, torch::kInt16, 2, "int16"},
    {4, torch::kInt32, 4, "int32"}, {5, torch::kInt64, 8, "int64"},     {6, torch::kFloat32, 4, "float32"},
    {7, torch::kBool, 1, "bool"},
};

const Dtype* dtype_of(torch::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return &d;
  }
  return nullptr;
}

const Dtype* dtype_of_code(uint8_t code) {
  for (const auto& d : kDtypes) {
    if (d.code == code) return &d;
  }
  return nullptr;
}

bool little_endian() {
  const uint16_t one = 1;
  uint8_t first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

void check_host() {
  // Tensor blobs are the host's bytes; only little-endian hosts write/read them as the format says.
  if (!little_endian()) {
    throw Error(ErrorCategory::kState, "int8 files are little-endian and this host is big-endian: not supported");
  }
}

class Writer {
 public:
  void u8(uint8_t v) { bytes_.push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { le(v, 2); }
  void u32(uint32_t v) { le(v, 4); }
  void i32(int32_t v) { le(static_cast<uint32_t>(v), 4); }
  void u64(uint64_t v) { le(v, 8); }
  void raw(const void* p, size_t n) { bytes_.append(static_cast<const char*>(p), n); }
  void align(size_t to) {
    while (bytes_.size() % to != 0) bytes_.push_back('\0');
  }
  size_t size() const { return bytes_.size(); }
  std::string& bytes() { return bytes_; }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string bytes_;
};

// A blob appended to the data region: returns its offset.
uint64_t append_blob(Writer& data, const torch::Tensor& t, size_t element_bytes) {
  data.align(element_bytes);
  const uint64_t offset = data.size();
  const auto c = t.contiguous();
  data.raw(c.data_ptr(), c.numel() * element_bytes);
  return offset;
}

// Bounds-checked little-endian reads of the index; `fail` throws the file's format error.
class Reader {
 public:
  Reader(const char* p, size_t n, std::function<void(const std::string&)> fail) : p_(p), n_(n), fail_(std::move(fail)) {}
  uint64_t le(int n) {
    need(n);
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(static_cast<uint8_t>(p_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  uint8_t u8() { return static_cast<uint8_t>(le(1)); }
  uint16_t u16() { return static_cast<uint16_t>(le(2)); }
  uint32_t u32() { return static_cast<uint32_t>(le(4)); }
  int32_t i32() { return static_cast<int32_t>(u32()); }
  uint64_t u64() { return le(8); }
  std::string str(size_t n) {
    need(n);
    std::string s(p_ + pos_, n);
    pos_ += n;
    return s;
  }
  size_t remaining() const { return n_ - pos_; }

 private:
  void need(size_t n) {
    if (n > n_ - pos_) fail_("its index ends in the middle of an entry");
  }
  const char* p_;
  size_t n_, pos_ = 0;
  std::function<void(const std::string&)> fail_;
};

const char* kind_name(Int8Record::Kind k) {
  switch (k) {
    case Int8Record::Kind::kWeight: return "weight";
    case Int8Record::Kind::kActivation: return "activation point";
    case Int8Record::Kind::kTensor: return "tensor";
  }
  return "?";
}

// Channels C that scale/zero point must have for `shape` and `axis`.
int64_t channels_for(const std::vector<int64_t>& shape, int64_t axis) {
  if (axis < 0) return 1;
  return axis < static_cast<int64_t>(shape.size()) ? shape[axis] : -1;
}

// Validation failure for one record, naming the file and the record.
Error bad_record(const std::string& path, const Int8Record& r, const std::string& why) {
  return Error(ErrorCategory::kValue,
               fmt::format("write_int8_file '{}': {} '{}' {}", path, kind_name(r.kind), r.name, why));
}

// A record checked against the format, its tensors on CPU in the dtype they are stored in.
struct Prepared {
  const Int8Record* r;
  const Dtype* dtype = nullptr;
  torch::Tensor values, scale, zero_point;
  bool store_zero_points = false;
};

Prepared prepare_record(const std::string& path, const Int8Record& r) {
  Prepared p;
  p.r = &r;
  const bool has_values = r.kind != Int8Record::Kind::kActivation;
  const bool has_qparams = r.kind != Int8Record::Kind::kTensor;
  if (has_values) {
    if (!r.values.defined()) throw bad_record(path, r, "has no values");
    if (r.values.dim() > static_cast<int64_t>(kMaxDims)) {
      throw bad_record(path, r, fmt::format("has more than {} dimensions", kMaxDims));
    }
    p.values = r.values.detach().to(torch::kCPU).contiguous();
    p.dtype = dtype_of(p.values.scalar_type());
    const bool int8 = p.values.scalar_type() == torch::kInt8 || p.values.scalar_type() == torch::kUInt8;
    if (!p.dtype || (r.kind == Int8Record::Kind::kWeight && !int8)) {
      throw bad_record(path, r,
                       fmt::format("has values of dtype {}; {}", c10::toString(p.values.scalar_type()),
                                   r.kind == Int8Record::Kind::kWeight
                                       ? "int8 weights are int8 or uint8"
                                       : "the float remainder is float32, int8/16/32/64, uint8 or bool"));
    }
  }
  if (has_qparams) {
    if (!r.scale.defined() || !r.zero_point.defined()) throw bad_record(path, r, "has no scale or zero point");
    p.scale = r.scale.detach().to(torch::kCPU, torch::kFloat).reshape({-1}).contiguous();
    p.zero_point = r.zero_point.detach().to(torch::kCPU, torch::kInt).reshape({-1}).contiguous();
    if (p.scale.numel() != p.zero_point.numel()) {
      throw bad_record(path, r,
                       fmt::format("has {} scales but {} zero points", p.scale.numel(), p.zero_point.numel()));
    }
    if (r.quant_min >= r.quant_max || r.quant_min < std::numeric_limits<int32_t>::min() ||
        r.quant_max > std::numeric_limits<int32_t>::max()) {
      throw bad_record(path, r, fmt::format("has the grid [{}, {}]", r.quant_min, r.quant_max));
    }
    if (r.axis < -1) throw bad_record(path, r, fmt::format("has axis {} (use -1 for per tensor)", r.axis));
    if (has_values) {
      const auto shape = p.values.sizes().vec();
      if (p.scale.numel() != channels_for(shape, r.axis)) {
        throw bad_record(path, r,
                         fmt::format("has {} scales for values {} along axis {}", p.scale.numel(),
                                     shape_string(p.values), r.axis));
      }
    } else if (r.axis < 0 && p.scale.numel() != 1) {
      throw bad_record(path, r, fmt::format("is per tensor but has {} scales", p.scale.numel()));
    }
    p.store_zero_points = p.zero_point.ne(0).any().item<bool>();
  }
  return p;
}

// Every record is validated (and copied to CPU) before a single byte is laid out.
std::vector<Prepared> prepare_records(const std::string& path, const std::vector<Int8Record>& records) {
  std::vector<Prepared> prepared;
  std::set<std::pair<int, std::string>> names;
  for (const auto& r : records) {
    if (r.name.empty() || r.name.size() > std::numeric_limits<uint16_t>::max()) {
      throw bad_record(path, r, "needs a name of 1 to 65535 bytes");
    }
    if (!names.insert({static_cast<int>(r.kind), r.name}).second) throw bad_record(path, r, "appears twice");
    prepared.push_back(prepare_record(path, r));
  }
  return prepared;
}

// The data region and, per record, the offsets of its blobs in it (meaningful only where stored).
struct DataLayout {
  Writer data;
  std::vector<uint64_t> values_at, scale_at, zp_at;
};

// Data: int8 weights, scales, zero points, float remainder, integer tensors (each section contiguous).
DataLayout lay_out_data(const std::vector<Prepared>& prepared) {
  DataLayout layout;
  layout.values_at.resize(prepared.size());
  layout.scale_at.resize(prepared.size());
  layout.zp_at.resize(prepared.size());
  const auto section = [&](auto wanted, auto blob_of, auto size_of, std::vector<uint64_t>& at) {
    for (size_t i = 0; i < prepared.size(); ++i) {
      if (wanted(prepared[i])) at[i] = append_blob(layout.data, blob_of(prepared[i]), size_of(prepared[i]));
    }
  };
  const auto values_of = [](const Prepared& p) { return p.values; };
  const auto value_bytes = [](const Prepared& p) { return p.dtype->bytes; };
  section([](const Prepared& p) { return p.r->kind == Int8Record::Kind::kWeight; }, values_of, value_bytes,
          layout.values_at);
  section([](const Prepared& p) { return p.scale.defined(); }, [](const Prepared& p) { return p.scale; },
          [](const Prepared&) { return size_t{4}; }, layout.scale_at);
  section([](const Prepared& p) { return p.store_zero_points; }, [](const Prepared& p) { return p.zero_point; },
          [](const Prepared&) { return size_t{4}; }, layout.zp_at);
  section([](const Prepared& p) { return p.r->kind == Int8Record::Kind::kTensor && p.values.is_floating_point(); },
          values_of, value_bytes, layout.values_at);
  section([](const Prepared& p) { return p.r->kind == Int8Record::Kind::kTensor && !p.values.is_floating_point(); },
          values_of, value_bytes, layout.values_at);
  return layout;
}

Writer write_index(const std::vector<Prepared>& prepared, const DataLayout& layout) {
  Writer index;
  for (size_t i = 0; i < prepared.size(); ++i) {
    const auto& p = prepared[i];
    const auto& r = *p.r;
    index.u8(static_cast<uint8_t>(r.kind));
    index.u8(p.dtype ? p.dtype->code : 0);
    index.u16(static_cast<uint16_t>(r.name.size()));
    index.raw(r.name.data(), r.name.size());
    const auto shape = p.values.defined() ? p.values.sizes().vec() : std::vector<int64_t>{};
    index.u8(static_cast<uint8_t>(shape.size()));
    for (auto d : shape) index.u64(static_cast<uint64_t>(d));
    if (p.scale.defined()) {
      index.i32(static_cast<int32_t>(r.quant_min));
      index.i32(static_cast<int32_t>(r.quant_max));
      index.i32(static_cast<int32_t>(r.axis));
      index.u8((r.symmetric ? kFlagSymmetric : 0) | (p.store_zero_points ? kFlagZeroPoints : 0));
      index.u64(static_cast<uint64_t>(p.scale.numel()));
      index.u64(layout.scale_at[i]);
      if (p.store_zero_points) index.u64(layout.zp_at[i]);
    }
    if (p.values.defined()) index.u64(layout.values_at[i]);
  }
  return index;
}

// Sizes above this are impossible in a real file; rejecting them keeps the size arithmetic from overflowing.
constexpr uint64_t kSizeLimit = uint64_t{1} << 62;

// Throws the file's kFormat error; never returns.
using FormatFail = std::function<void(const std::string&)>;

// The whole file in memory: its size and CRC are checked before any of it is parsed.
std::string load_file(const std::string& path) {
  if (!std::filesystem::exists(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("int8 file '{}' does not exist; kd::qat::export_int8 (or kd-train "
                                                  "distill with a \"qat\" stage, OUT/student.int8.pt) writes one",
                                                  path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCategory::kFile, fmt::format("int8 file '{}' cannot be opened for reading", path));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Header {
  uint32_t count;
  uint64_t index_bytes, data_bytes;
  uint64_t data_start;  // offset of the data region in the file
};

// Checks the header against the whole file (exact size, CRC), so the index and data can be trusted to lie in it.
Header read_header(const std::string& path, const std::string& file, const FormatFail& fail) {
  if (file.size() >= 4 && file.compare(0, 4, "PK\x03\x04") == 0) {
    fail("it is a zip archive, i.e. a LibTorch file (a checkpoint, a torch::save'd model, or an int8 file of "
         "format version 1 from an older kdistill), not this format");
  }
  if (file.size() < kMagic.size() || file.compare(0, kMagic.size(), kMagic.data(), kMagic.size()) != 0) {
    fail("it does not start with the int8 magic \"KDQINT8\"");
  }
  if (file.size() < kHeaderBytes) fail(fmt::format("it is truncated: {} bytes, shorter than the header", file.size()));
  Reader header(file.data() + kMagic.size(), kHeaderBytes - kMagic.size(), fail);
  const uint32_t version = header.u32();
  if (version != kInt8FileVersion) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("int8 file '{}' has format version {}; this kdistill reads version {} (export it again "
                            "with this kdistill's kd::qat::export_int8)",
                            path, version, kInt8FileVersion));
  }
  Header h;
  h.count = header.u32();
  h.index_bytes = header.u64();
  h.data_bytes = header.u64();
  const uint32_t stored_crc = header.u32();
  if (h.index_bytes > kSizeLimit || h.data_bytes > kSizeLimit) fail("its header gives impossible sizes");
  h.data_start = (kHeaderBytes + h.index_bytes + 7) / 8 * 8;
  const uint64_t expected = h.data_start + h.data_bytes;
  if (file.size() < expected) {
    fail(fmt::format("it is truncated: the header promises {} bytes, the file has {}", expected, file.size()));
  }
  if (file.size() > expected) {
    fail(fmt::format("it has {} bytes after the {} its header promises", file.size() - expected, expected));
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(file.data() + kHeaderBytes), file.size() - kHeaderBytes);
  if (static_cast<uint32_t>(crc) != stored_crc) {
    fail(fmt::format("its CRC-32 is {:08x} but the header says {:08x}: the file is corrupt", static_cast<uint32_t>(crc),
                     stored_crc));
  }
  return h;
}

// The data region: offsets from the index are bounds-checked here before any byte is copied.
class DataRegion {
 public:
  DataRegion(const char* data, uint64_t bytes, FormatFail fail) : data_(data), bytes_(bytes), fail_(std::move(fail)) {}
  const char* blob(uint64_t offset, uint64_t bytes, const std::string& what) const {
    if (offset > bytes_ || bytes > bytes_ - offset) {
      fail_(fmt::format("{} lies outside the data ({} bytes at {}, data has {})", what, bytes, offset, bytes_));
    }
    return data_ + offset;
  }
  torch::Tensor tensor_at(uint64_t offset, const std::vector<int64_t>& shape, const Dtype& d,
                          const std::string& what) const {
    int64_t numel = 1;
    for (auto s : shape) numel *= s;
    const char* p = blob(offset, static_cast<uint64_t>(numel) * d.bytes, what);
    auto t = torch::empty(shape, torch::TensorOptions().dtype(d.type));
    if (numel > 0) std::memcpy(t.data_ptr(), p, static_cast<size_t>(numel) * d.bytes);  // null data_ptr when empty
    return t;
  }

 private:
  const char* data_;
  uint64_t bytes_;
  FormatFail fail_;
};

// Each dimension and the running element count stay under kSizeLimit, so byte sizes cannot overflow.
std::vector<int64_t> read_shape(Reader& index, const std::string& what, const FormatFail& fail) {
  const uint64_t ndim = index.u8();
  if (ndim > kMaxDims) fail(fmt::format("{} has {} dimensions", what, ndim));
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (uint64_t d = 0; d < ndim; ++d) {
    const uint64_t s = index.u64();
    if (s > kSizeLimit || (s > 0 && numel > kSizeLimit / s)) fail(fmt::format("{} has an impossible shape", what));
    numel *= s;
    shape.push_back(static_cast<int64_t>(s));
  }
  return shape;
}

// The grid, axis and scales of a weight or activation point; unstored zero points come back as zeros.
void read_qparams(Reader& index, const DataRegion& data, Int8Record& r, const std::vector<int64_t>& shape,
                  bool has_values, const std::string& what, const FormatFail& fail) {
  r.quant_min = index.i32();
  r.quant_max = index.i32();
  r.axis = index.i32();
  const uint8_t flags = index.u8();
  const uint64_t channels = index.u64();
  const uint64_t scale_at = index.u64();
  if (r.quant_min >= r.quant_max || r.quant_min > 0 || r.quant_max <= 0) {
    fail(fmt::format("{} has the grid [{}, {}], which does not contain 0", what, r.quant_min, r.quant_max));
  }
  if (r.kind == Int8Record::Kind::kWeight && (r.quant_min < -128 || r.quant_max > 255)) {
    fail(fmt::format("{} has the grid [{}, {}], wider than 8 bits", what, r.quant_min, r.quant_max));
  }
  if (r.axis < -1 || channels < 1 || channels > kSizeLimit) {
    fail(fmt::format("{} has axis {} and {} scales", what, r.axis, channels));
  }
  if (has_values && static_cast<int64_t>(channels) != channels_for(shape, r.axis)) {
    fail(fmt::format("{} has {} scales, which do not fit its values [{}] along axis {}", what, channels,
                     fmt::join(shape, ", "), r.axis));
  }
  if (!has_values && r.axis < 0 && channels != 1) {
    fail(fmt::format("{} is per tensor but has {} scales", what, channels));
  }
  r.symmetric = flags & kFlagSymmetric;
  const std::vector<int64_t> c{static_cast<int64_t>(channels)};
  r.scale = data.tensor_at(scale_at, c, *dtype_of(torch::kFloat32), what + "'s scales");
  r.zero_point = (flags & kFlagZeroPoints)
                     ? data.tensor_at(index.u64(), c, *dtype_of(torch::kInt32), what + "'s zero points")
                     : torch::zeros(c, torch::kInt32);
  if (!(r.scale > 0).all().item<bool>() || !torch::isfinite(r.scale).all().item<bool>()) {
    fail(fmt::format("{} has a scale that is not a positive finite number", what));
  }
  if (((r.zero_point < r.quant_min) | (r.zero_point > r.quant_max)).any().item<bool>()) {
    fail(fmt::format("{} has a zero point outside [{}, {}]", what, r.quant_min, r.quant_max));
  }
}

// Entry i of the index, checked in full; `names` catches a (kind, name) pair seen before.
Int8Record read_entry(Reader& index, const DataRegion& data, uint32_t i, std::set<std::pair<int, std::string>>& names,
                      const FormatFail& fail) {
  Int8Record r;
  const uint8_t kind = index.u8();
  if (kind < 1 || kind > 3) fail(fmt::format("entry {} has the unknown kind {}", i, kind));
  r.kind = static_cast<Int8Record::Kind>(kind);
  const uint8_t code = index.u8();
  r.name = index.str(index.u16());
  const std::string what = fmt::format("{} '{}'", kind_name(r.kind), r.name);
  if (r.name.empty() || !names.insert({kind, r.name}).second) {
    fail(fmt::format("entry {} ({}) has an empty or repeated name", i, what));
  }
  const std::vector<int64_t> shape = read_shape(index, what, fail);
  const bool has_values = r.kind != Int8Record::Kind::kActivation;
  const Dtype* dtype = nullptr;
  if (has_values) {
    dtype = dtype_of_code(code);
    const bool int8 = dtype && (dtype->type == torch::kInt8 || dtype->type == torch::kUInt8);
    if (!dtype || (r.kind == Int8Record::Kind::kWeight && !int8)) {
      fail(fmt::format("{} has the dtype code {}", what, code));
    }
  }
  if (r.kind != Int8Record::Kind::kTensor) read_qparams(index, data, r, shape, has_values, what, fail);
  if (has_values) r.values = data.tensor_at(index.u64(), shape, *dtype, what + "'s values");
  if (r.kind == Int8Record::Kind::kWeight) {
    const auto outside = (r.values.to(torch::kInt32) < r.quant_min) | (r.values.to(torch::kInt32) > r.quant_max);
    if (outside.any().item<bool>()) {
      fail(fmt::format("{} has values outside its grid [{}, {}]", what, r.quant_min, r.quant_max));
    }
  }
  return r;
}

}  // namespace

void write_int8_file(const std::string& path, const std::vector<Int8Record>& records) {
  check_host();
  const std::vector<Prepared> prepared = prepare_records(path, records);
  DataLayout layout = lay_out_data(prepared);
  Writer& data = layout.data;
  Writer index = write_index(prepared, layout);

  Writer body;  // index, padding, data: what the CRC covers
  body.raw(index.bytes().data(), index.size());
  body.align(8);
  body.raw(data.bytes().data(), data.size());
  Writer header;
  header.raw(kMagic.data(), kMagic.size());
  header.u32(kInt8FileVersion);
  header.u32(static_cast<uint32_t>(records.size()));
  header.u64(index.size());
  header.u64(data.size());
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(body.bytes().data()), body.size());
  header.u32(static_cast<uint32_t>(crc));
  header.u32(0);
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(header.bytes().data(), static_cast<std::streamsize>(header.size()));
    out.write(body.bytes().data(), static_cast<std::streamsize>(body.size()));
    out.close();
    if (!out) throw Error(ErrorCategory::kFile, fmt::format("cannot write '{}' (disk full?)", tmp));
  });
}

std::vector<Int8Record> read_int8_file(const std::string& path) {
  check_host();
  const std::string file = load_file(path);
  const FormatFail fail = [&](const std::string& why) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not a valid int8 file written by kd::qat::export_int8: {}; export it again "
                            "(kd::qat::export_int8, or kd-train distill with a \"qat\" stage)",
                            path, why));
  };
  const Header h = read_header(path, file, fail);
  const DataRegion data(file.data() + h.data_start, h.data_bytes, fail);
  Reader index(file.data() + kHeaderBytes, h.index_bytes, fail);
  std::vector<Int8Record> records;
  std::set<std::pair<int, std::string>> names;
  for (uint32_t i = 0; i < h.count; ++i) records.push_back(read_entry(index, data, i, names, fail));
  if (index.remaining() != 0) {
    fail(fmt::format("its index has {} bytes after the {} entries", index.remaining(), h.count));
  }
  return records;
}

}  // namespace kd::qat
