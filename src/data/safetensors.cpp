#include "kd/data/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/io/atomic_file.h"
#include "kd/core/error.h"

// The data buffer is copied byte for byte into LibTorch's tensors, which hold their elements in the
// machine's order: both reader and writer assume a little-endian machine, as safetensors files are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kd::data safetensors I/O assumes a little-endian machine");

namespace kd::data {
namespace {

using Json = nlohmann::json;

// The reference implementation's limit on the header (safetensors' MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSupported = "BOOL, U8, I8, I16, U16, I32, U32, I64, F16, BF16, F32, F64";

struct Dtype {
  const char* name;
  torch::ScalarType type;  // the LibTorch type it is read into
  size_t file_bytes;       // bytes per element in the file
};

// U16 and U32 have no LibTorch 1.13 type of their own: they are widened to the next signed type.
constexpr Dtype kDtypes[] = {
    {"BOOL", torch::kBool, 1},     {"U8", torch::kUInt8, 1},    {"I8", torch::kInt8, 1},
    {"I16", torch::kInt16, 2},     {"U16", torch::kInt32, 2},   {"I32", torch::kInt32, 4},
    {"U32", torch::kInt64, 4},     {"I64", torch::kInt64, 8},   {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"F32", torch::kFloat32, 4}, {"F64", torch::kFloat64, 8},
};

const Dtype& find_dtype(const std::string& name, const std::string& source, const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d;
  }
  std::string why;
  if (name == "U64") {
    why = "LibTorch 1.13 has no unsigned 64-bit type, and int64 cannot hold values from 2^63 on";
  } else if (name.rfind("F8_", 0) == 0 || name.rfind("F6_", 0) == 0 || name == "F4" || name == "F8_E8M0") {
    why = "LibTorch 1.13 has no float type narrower than 16 bits";
  } else {
    why = "it is not a safetensors dtype this reader knows";
  }
  throw Error(ErrorCategory::kFormat,
              fmt::format("'{}': tensor '{}' has dtype '{}', which is not supported: {}; supported dtypes: {} "
                          "(convert the tensor to one of them before saving)",
                          source, tensor, name, why, kSupported));
}

const char* dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kBool: return "BOOL";
    case torch::kUInt8: return "U8";
    case torch::kInt8: return "I8";
    case torch::kInt16: return "I16";
    case torch::kInt32: return "I32";
    case torch::kInt64: return "I64";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    default: return nullptr;
  }
}

uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// One tensor's entry of the header, checked against the data buffer but not yet copied.
struct Entry {
  std::string name;
  const Dtype* dtype;
  std::vector<int64_t> shape;
  uint64_t numel;
  uint64_t begin, end;
};

// A JSON number that is a non-negative integer (nlohmann keeps those as number_unsigned).
bool as_unsigned(const Json& j, uint64_t& out) {
  if (!j.is_number_unsigned()) return false;
  out = j.get<uint64_t>();
  return true;
}

Entry parse_entry(const std::string& name, const Json& j, uint64_t buffer_bytes, const std::string& source) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorCategory::kFormat,
                 fmt::format("'{}': tensor '{}': {}; every tensor's entry must be an object "
                             "{{\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [begin, end]}}",
                             source, name, why));
  };
  if (!j.is_object()) throw bad(fmt::format("its entry is a JSON {}, not an object", j.type_name()));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) throw bad(fmt::format("its entry lacks \"{}\"", key));
  }
  const Json& dtype = j["dtype"];
  if (!dtype.is_string()) throw bad(fmt::format("\"dtype\" is a JSON {}, not a string", dtype.type_name()));
  Entry e{name, &find_dtype(dtype.get<std::string>(), source, name), {}, 0, 0, 0};

  const Json& shape = j["shape"];
  if (!shape.is_array()) throw bad(fmt::format("\"shape\" is a JSON {}, not an array", shape.type_name()));
  // numel, and the product of max(size, 1) that LibTorch's strides reach, must fit int64.
  uint64_t numel = 1, span = 1;
  const uint64_t int64_max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  for (const Json& d : shape) {
    uint64_t size = 0;
    if (!as_unsigned(d, size)) {
      if (d.is_number_integer()) {
        throw Error(ErrorCategory::kFormat,
                    fmt::format("'{}': tensor '{}': shape {} has the negative dimension {}; sizes must be >= 0",
                                source, name, shape.dump(), d.get<int64_t>()));
      }
      throw bad(fmt::format("\"shape\" {} holds a JSON {}, not a non-negative integer", shape.dump(),
                            d.type_name()));
    }
    if (__builtin_mul_overflow(numel, size, &numel) ||
        __builtin_mul_overflow(span, std::max<uint64_t>(size, 1), &span) || span > int64_max) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("'{}': tensor '{}': shape {} has more elements than a 64-bit count holds; the "
                              "header is corrupt",
                              source, name, shape.dump()));
    }
    e.shape.push_back(static_cast<int64_t>(size));
  }
  e.numel = numel;

  const Json& offsets = j["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !as_unsigned(offsets[0], e.begin) ||
      !as_unsigned(offsets[1], e.end)) {
    throw bad(fmt::format("\"data_offsets\" is {}, not two non-negative integers [begin, end]", offsets.dump()));
  }
  if (e.end < e.begin) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': tensor '{}': data_offsets [{}, {}] end before they begin; the header is corrupt",
                            source, name, e.begin, e.end));
  }
  if (e.end > buffer_bytes) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': tensor '{}': data_offsets [{}, {}] reach beyond the data buffer of {} bytes; "
                            "the file is truncated or corrupt",
                            source, name, e.begin, e.end, buffer_bytes));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, e.dtype->file_bytes, &nbytes) || nbytes != e.end - e.begin) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': tensor '{}': shape {} of {} needs {} x {} bytes but data_offsets [{}, {}] "
                            "hold {} bytes; the header is corrupt",
                            source, name, shape.dump(), e.dtype->name, numel, e.dtype->file_bytes, e.begin, e.end,
                            e.end - e.begin));
  }
  return e;
}

// As the reference implementation: the tensors, sorted by offset, tile the data buffer exactly.
void check_coverage(std::vector<const Entry*> entries, uint64_t buffer_bytes, const std::string& source) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry* a, const Entry* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : entries) {
    if (e->begin < covered) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("'{}': tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}' (data_offsets [{}, "
                              "{}]); each byte of the data buffer belongs to one tensor, so the header is corrupt",
                              source, e->name, e->begin, e->end, previous->name, previous->begin, previous->end));
    }
    if (e->begin > covered) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("'{}': bytes [{}, {}) of the data buffer, before tensor '{}', belong to no tensor; "
                              "the tensors must cover the buffer without holes, so the header is corrupt",
                              source, covered, e->begin, e->name));
    }
    covered = e->end;
    previous = e;
  }
  if (covered != buffer_bytes) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': the data buffer holds {} bytes but the tensors cover only the first {}; the "
                            "header is incomplete or the file has trailing bytes",
                            source, buffer_bytes, covered));
  }
}

torch::Tensor copy_out(const Entry& e, const uint8_t* buffer, const std::string& source) {
  auto out = torch::empty(e.shape, e.dtype->type);
  if (e.numel == 0) return out;  // data_ptr() may be null: nothing to copy
  const uint8_t* src = buffer + e.begin;
  const size_t n = static_cast<size_t>(e.numel);
  if (e.dtype->type == torch::kBool) {
    // A bool byte other than 0 or 1 is undefined behaviour in C++ (and in LibTorch's kernels).
    const uint8_t* bad = std::find_if(src, src + n, [](uint8_t b) { return b > 1; });
    if (bad != src + n) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("'{}': tensor '{}' of dtype BOOL holds the byte {} at element {}; BOOL elements "
                              "must be 0 or 1",
                              source, e.name, *bad, bad - src));
    }
  }
  if (std::strcmp(e.dtype->name, "U16") == 0) {
    auto* dst = out.data_ptr<int32_t>();
    for (size_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      dst[i] = v;
    }
  } else if (std::strcmp(e.dtype->name, "U32") == 0) {
    auto* dst = out.data_ptr<int64_t>();
    for (size_t i = 0; i < n; ++i) {
      uint32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      dst[i] = v;
    }
  } else {
    std::memcpy(out.data_ptr(), src, e.end - e.begin);
  }
  return out;
}

// Closes the descriptor and unmaps the file on every exit path.
struct MappedFile {
  int fd = -1;
  void* data = MAP_FAILED;
  size_t size = 0;
  ~MappedFile() {
    if (data != MAP_FAILED) ::munmap(data, size);
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& source) {
  if (size < 8) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not a safetensors file: it has {} bytes, fewer than the 8 of the header length",
                            source, size));
  }
  const uint64_t header_bytes = le64(data);
  if (header_bytes > kMaxHeaderBytes) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': the safetensors header length {} is larger than the limit of {} bytes (100 MB); "
                            "the file is corrupt or not a safetensors file",
                            source, header_bytes, kMaxHeaderBytes));
  }
  if (header_bytes > size - 8) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': the safetensors header length {} is larger than the {} bytes that follow it "
                            "(file size {}); the file is truncated or not a safetensors file",
                            source, header_bytes, size - 8, size));
  }
  const uint8_t* header_begin = data + 8;
  const uint8_t* buffer = header_begin + header_bytes;
  const uint64_t buffer_bytes = size - 8 - header_bytes;

  Json header;
  try {
    header = Json::parse(header_begin, buffer);
  } catch (const Json::exception& e) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': the safetensors header ({} bytes) is not valid UTF-8 JSON: {}", source,
                            header_bytes, e.what()));
  }
  if (!header.is_object()) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}': the safetensors header is a JSON {}, not an object of tensor entries", source,
                            header.type_name()));
  }

  SafetensorsFile file;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) {
        throw Error(ErrorCategory::kFormat,
                    fmt::format("'{}': \"{}\" is a JSON {}, not an object of strings", source, kMetadataKey,
                                value.type_name()));
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          throw Error(ErrorCategory::kFormat,
                      fmt::format("'{}': \"{}\" key '{}' is a JSON {}; metadata values must be strings", source,
                                  kMetadataKey, mkey, mvalue.type_name()));
        }
        file.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, buffer_bytes, source));
  }
  std::vector<const Entry*> pointers;
  for (const auto& e : entries) pointers.push_back(&e);
  check_coverage(std::move(pointers), buffer_bytes, source);

  for (const auto& e : entries) file.tensors.emplace(e.name, copy_out(e, buffer, source));
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  MappedFile m;
  m.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m.fd < 0) {
    if (errno == ENOENT) {
      throw Error(ErrorCategory::kFile, fmt::format("safetensors file '{}' does not exist", path));
    }
    throw Error(ErrorCategory::kFile, fmt::format("cannot open safetensors file '{}': {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(m.fd, &st) != 0) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot stat safetensors file '{}': {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorCategory::kFile, fmt::format("'{}' is not a regular file; expected a safetensors file", path));
  }
  m.size = static_cast<size_t>(st.st_size);
  if (m.size == 0) return parse_safetensors(nullptr, 0, path);  // mmap refuses length 0; the parser explains
  m.data = ::mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, m.fd, 0);
  if (m.data == MAP_FAILED) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot map safetensors file '{}': {}", path, std::strerror(errno)));
  }
  return parse_safetensors(static_cast<const uint8_t*>(m.data), m.size, path);
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  struct Prepared {
    const std::string* name;
    torch::Tensor data;  // contiguous, on the CPU
    size_t nbytes;
  };
  std::vector<Prepared> prepared;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;  // first, as the reference implementation writes it
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {  // std::map: sorted by name
    if (name == kMetadataKey) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("cannot write '{}': \"{}\" is reserved for the metadata and cannot name a tensor; "
                              "rename the tensor",
                              path, kMetadataKey));
    }
    if (!tensor.defined()) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("cannot write '{}': tensor '{}' is undefined; give it a value or leave it out", path,
                              name));
    }
    if (tensor.layout() != torch::kStrided || tensor.is_quantized()) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("cannot write '{}': tensor '{}' is {}; safetensors holds dense tensors only (convert "
                              "it with .to_dense() or .dequantize())",
                              path, name, tensor.is_quantized() ? "quantized" : "not dense (strided)"));
    }
    const char* dtype = dtype_name(tensor.scalar_type());
    if (!dtype) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("cannot write '{}': tensor '{}' has dtype {}, which safetensors cannot hold here; "
                              "supported: bool, uint8, int8, int16, int32, int64, float16, bfloat16, float32, "
                              "float64 (convert it with .to())",
                              path, name, c10::toString(tensor.scalar_type())));
    }
    auto data = tensor.detach().to(torch::kCPU).resolve_conj().resolve_neg().contiguous();
    const size_t nbytes = data.nbytes();
    header[name] = {{"dtype", dtype}, {"shape", data.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    prepared.push_back({&name, std::move(data), nbytes});
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(ErrorCategory::kValue,
                fmt::format("cannot write '{}': a tensor name or metadata string is not valid UTF-8 ({}); "
                            "safetensors headers are UTF-8 JSON",
                            path, e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // as the reference: the data buffer starts 8-byte aligned
  std::string length(8, '\0');
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((uint64_t(text.size()) >> (8 * i)) & 0xff);

  write_atomically(path, [&](const std::string& tmp) {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw Error(ErrorCategory::kFile, fmt::format("cannot create '{}': {}", tmp, std::strerror(errno)));
    bool ok = std::fwrite(length.data(), 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const auto& p : prepared) {
      if (!ok) break;
      if (p.nbytes > 0) ok = std::fwrite(p.data.data_ptr(), 1, p.nbytes, f) == p.nbytes;
    }
    ok = std::fflush(f) == 0 && ok;
    const std::string cause = std::strerror(errno);
    std::fclose(f);
    if (!ok) throw Error(ErrorCategory::kFile, fmt::format("cannot write '{}': {}", path, cause));
  });
}

}  // namespace kd::data
