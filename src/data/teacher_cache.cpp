#include "kd/data/teacher_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zlib.h>

#include "kd/core/atomic_file.h"
#include "kd/core/device.h"
#include "kd/core/error.h"
#include "kd/dist/process_group.h"

namespace kd::data {
namespace {

constexpr const char* kMagic = "KDTCACHE";
constexpr size_t kAlign = 4096;
// The payload is checksummed in chunks of up to this many examples (and about kChunkBytes) per entry, CRC-32
// each, in a trailer after the entries: a damaged byte is found when the cache is opened, named by entry and
// examples.
constexpr int64_t kChunkRows = 4096;
constexpr size_t kChunkBytes = size_t{64} << 20;

uint32_t crc_bytes(const unsigned char* p, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < n;) {  // zlib takes at most uInt bytes at a time
    const size_t step = std::min<size_t>(n - done, size_t{1} << 30);
    crc = crc32(crc, p + done, static_cast<uInt>(step));
    done += step;
  }
  return static_cast<uint32_t>(crc);
}

void put_u32_le(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t get_u32_le(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

uint32_t crc_tensor(uLong crc, const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU).contiguous();
  // The rank, then the sizes: a 0-dim tensor has no sizes, and zlib's crc32 given a null buffer
  // returns the initial value instead of the running one, so it must never see one.
  const auto shape = c.sizes().vec();
  const int64_t rank = static_cast<int64_t>(shape.size());
  crc = crc32(crc, reinterpret_cast<const Bytef*>(&rank), sizeof(rank));
  if (!shape.empty()) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(shape.data()), static_cast<uInt>(shape.size() * sizeof(int64_t)));
  }
  const auto* p = static_cast<const Bytef*>(c.data_ptr());
  size_t left = c.numel() * c.element_size();
  while (left > 0) {
    const auto n = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

std::string storage_name(torch::Dtype d) { return d == torch::kInt32 ? "int32" : dtype_name(d); }
torch::Dtype storage_dtype(const std::string& s) { return s == "int32" ? torch::kInt32 : parse_dtype(s); }

size_t row_bytes(torch::Dtype dtype, const std::vector<int64_t>& shape) {
  size_t n = c10::elementSize(dtype);
  for (auto d : shape) n *= static_cast<size_t>(d);
  return n;
}

// What a cache stores, as one header line; two caches with the same line hold the same kind of outputs.
std::string describe(const TeacherCacheOptions& o) {
  return fmt::format("top_k={} dtype={} hidden_states={} attentions={}", o.top_k(), dtype_name(o.dtype()),
                     fmt::join(o.hidden_states(), ","), fmt::join(o.attentions(), ","));
}

}  // namespace

uint32_t module_fingerprint(const torch::nn::Module& module) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const auto& p : module.named_parameters()) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p.key().data()), static_cast<uInt>(p.key().size()));
    crc = crc_tensor(crc, p.value());
  }
  for (const auto& b : module.named_buffers()) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(b.key().data()), static_cast<uInt>(b.key().size()));
    crc = crc_tensor(crc, b.value());
  }
  return static_cast<uint32_t>(crc);
}

uint32_t dataset_fingerprint(const TensorDataset& dataset) {
  return crc_tensor(crc32(0L, Z_NULL, 0), dataset.inputs);
}

void TeacherCache::build(const std::string& path, Teacher& teacher, const TensorDataset& dataset,
                         const TeacherCacheOptions& options, dist::ProcessGroup* group) {
  const int64_t n = dataset.size();
  if (n == 0) throw Error(ErrorCategory::kValue, "TeacherCache::build: the dataset is empty");
  if (options.top_k() < 0 || options.batch_size() <= 0) {
    throw Error(ErrorCategory::kValue, fmt::format("TeacherCacheOptions: top_k must be >= 0 (got {}) and batch_size > 0 (got {})",
                                                   options.top_k(), options.batch_size()));
  }
  const auto dtype = options.dtype();
  if (dtype != torch::kFloat32 && dtype != torch::kFloat16 && dtype != torch::kBFloat16) {
    throw Error(ErrorCategory::kValue, "TeacherCacheOptions.dtype must be float32, float16 or bfloat16");
  }
  const auto params = teacher->parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  const uint32_t teacher_fp = module_fingerprint(*teacher->model());
  const uint32_t data_fp = dataset_fingerprint(dataset);

  // Outputs for one batch, as the entries to store.
  size_t layer_count = 0, attention_count = 0;
  auto entries_of = [&](const ModelOutput& out, std::vector<std::pair<std::string, torch::Tensor>>& rows) {
    rows.clear();
    layer_count = out.hidden_states.size();
    attention_count = out.attentions.size();
    if (!out.logits.defined()) throw Error(ErrorCategory::kModel, "TeacherCache: the teacher returned no logits");
    if (options.top_k() > 0) {
      if (options.top_k() > out.logits.size(-1)) {
        throw Error(ErrorCategory::kValue, fmt::format("TeacherCache: top_k {} exceeds the {} classes", options.top_k(),
                                                       out.logits.size(-1)));
      }
      auto [values, indices] = out.logits.topk(options.top_k(), -1);
      rows.emplace_back("topk_logits", values.to(torch::kCPU, dtype));
      rows.emplace_back("topk_indices", indices.to(torch::kCPU, torch::kInt32));
    } else {
      rows.emplace_back("logits", out.logits.to(torch::kCPU, dtype));
    }
    // Negative indices count from the last layer, as in the losses' layer pairs.
    auto add_layers = [&](const char* key, const std::vector<int64_t>& wanted, const std::vector<torch::Tensor>& have,
                          const char* unit) {
      const auto count = static_cast<int64_t>(have.size());
      for (int64_t i : wanted) {
        const int64_t r = i < 0 ? count + i : i;
        if (r < 0 || r >= count) {
          throw Error(ErrorCategory::kValue, fmt::format("TeacherCache: {} index {} is out of range: the teacher "
                                                         "exposes {} {}", key, i, count, unit));
        }
        rows.emplace_back(fmt::format("{}.{}", key, r), have[r].to(torch::kCPU, dtype));
      }
    };
    add_layers("hidden_states", options.hidden_states(), out.hidden_states, "layer(s)");
    add_layers("attentions", options.attentions(), out.attentions, "attention map(s)");
  };

  // The layout (header, entries, offsets) from the teacher's output for one example, so that every
  // rank knows it before any writes.
  std::vector<Entry> layout;
  std::vector<std::pair<std::string, torch::Tensor>> rows;
  entries_of(teacher->forward(dataset.inputs.slice(0, 0, 1).to(device)), rows);
  std::ostringstream header;
  header << kMagic << "\nversion 3\n"
         << fmt::format("teacher {:08x}\ndata {:08x}\noptions {}\nsize {}\ntop_k {}\nlayers {}\nattention_layers {}\n",
                        teacher_fp, data_fp, describe(options), n, options.top_k(), layer_count, attention_count);
  for (const auto& [name, t] : rows) {
    Entry e{name, t.scalar_type(), t.sizes().slice(1).vec(), 0};
    header << "entry " << name << " " << storage_name(e.dtype);
    for (auto d : e.shape) header << " " << d;
    header << "\n";
    layout.push_back(e);
  }
  size_t widest = 1;
  for (const auto& e : layout) widest = std::max(widest, row_bytes(e.dtype, e.shape));
  const int64_t chunk_rows = std::clamp<int64_t>(static_cast<int64_t>(kChunkBytes / widest), 1, kChunkRows);
  header << "chunk_rows " << chunk_rows << "\n";
  header << "end\n";
  const std::string head = header.str();
  size_t file_size = (head.size() + kAlign - 1) / kAlign * kAlign;
  for (auto& e : layout) {
    e.offset = file_size;
    file_size = (file_size + row_bytes(e.dtype, e.shape) * n + kAlign - 1) / kAlign * kAlign;
  }
  const size_t payload_end = file_size;
  const int64_t chunks = (n + chunk_rows - 1) / chunk_rows;
  file_size += 4 * layout.size() * static_cast<size_t>(chunks);

  // Data-parallel: each rank runs the teacher over its contiguous share of the batches.
  const int64_t world = group ? group->world_size() : 1;
  const int64_t rank = group ? group->rank() : 0;
  const int64_t batches = (n + options.batch_size() - 1) / options.batch_size();
  auto rows_of = [&](int64_t r) {
    const auto [b0, b1] = dist::shard_range(batches, r, world);
    return std::pair<int64_t, int64_t>{std::min(n, b0 * options.batch_size()), std::min(n, b1 * options.batch_size())};
  };
  // Writes rows [first, last) of every entry; entry k's row i goes to base[k] + row_bytes · (i − first).
  auto write_rows = [&](std::fstream& file, const std::vector<size_t>& base, int64_t first, int64_t last) {
    for (int64_t start = first; start < last; start += options.batch_size()) {
      const int64_t end = std::min(last, start + options.batch_size());
      entries_of(teacher->forward(dataset.inputs.slice(0, start, end).to(device)), rows);
      if (rows.size() != layout.size()) {
        throw Error(ErrorCategory::kModel, "TeacherCache: the teacher returned different outputs for different batches");
      }
      for (size_t k = 0; k < rows.size(); ++k) {
        const auto t = rows[k].second.contiguous();
        const size_t rb = row_bytes(layout[k].dtype, layout[k].shape);
        file.seekp(static_cast<std::streamoff>(base[k] + rb * (start - first)));
        file.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(rb * (end - start)));
      }
    }
  };
  // A rank other than 0 writes its rows to PATH.part<rank>, entry after entry; rank 0 copies them in.
  auto part_path = [&](int64_t r) { return fmt::format("{}.part{}", path, r); };
  auto part_bases = [&](int64_t r) {
    const auto [first, last] = rows_of(r);
    std::vector<size_t> base;
    size_t at = 0;
    for (const auto& e : layout) {
      base.push_back(at);
      at += row_bytes(e.dtype, e.shape) * static_cast<size_t>(last - first);
    }
    return base;
  };
  // Building takes as long as the teacher needs; a rank that dies still fails the others at once.
  constexpr double kBuildWait = 6 * 3600.0;
  // Plain variables, not a structured binding: the lambda below captures them (C++17 forbids that).
  const auto my_rows = rows_of(rank);
  const int64_t my_first = my_rows.first, my_last = my_rows.second;

  if (rank != 0) {
    const std::string part = part_path(rank);
    {
      std::fstream file(part, std::ios::out | std::ios::binary | std::ios::trunc);
      if (!file) throw Error(ErrorCategory::kFile, fmt::format("cannot create the teacher-cache part '{}'", part));
      write_rows(file, part_bases(rank), my_first, my_last);
      file.flush();
      if (!file) throw Error(ErrorCategory::kFile, fmt::format("writing '{}' failed (disk full?)", part));
    }
    group->barrier(kBuildWait);  // parts written
    group->barrier(kBuildWait);  // rank 0 merged them and renamed the cache into place
    return;
  }

  write_atomically(path, [&](const std::string& tmp) {
    std::fstream file(tmp, std::ios::out | std::ios::binary | std::ios::trunc);
    if (!file) throw Error(ErrorCategory::kFile, fmt::format("cannot create '{}'", tmp));
    file.write(head.data(), static_cast<std::streamsize>(head.size()));
    // Size the file up front so a short file is recognisably truncated.
    file.seekp(static_cast<std::streamoff>(file_size - 1));
    file.put('\0');
    std::vector<size_t> base;
    for (const auto& e : layout) base.push_back(e.offset + row_bytes(e.dtype, e.shape) * my_first);
    write_rows(file, base, my_first, my_last);
    if (group) {
      group->barrier(kBuildWait);
      std::vector<char> buffer(1 << 20);
      for (int64_t r = 1; r < world; ++r) {
        const auto [first, last] = rows_of(r);
        const auto pbase = part_bases(r);
        std::ifstream in(part_path(r), std::ios::binary);
        if (!in) {
          throw Error(ErrorCategory::kFile,
                      fmt::format("the teacher-cache part '{}' of rank {} is missing: with ranks on several machines the "
                                  "output folder must be one folder they all share",
                                  part_path(r), r));
        }
        for (size_t k = 0; k < layout.size(); ++k) {
          size_t left = row_bytes(layout[k].dtype, layout[k].shape) * static_cast<size_t>(last - first);
          in.seekg(static_cast<std::streamoff>(pbase[k]));
          file.seekp(static_cast<std::streamoff>(layout[k].offset + row_bytes(layout[k].dtype, layout[k].shape) * first));
          while (left > 0) {
            const size_t chunk = std::min(left, buffer.size());
            if (!in.read(buffer.data(), static_cast<std::streamsize>(chunk))) {
              throw Error(ErrorCategory::kFile, fmt::format("the teacher-cache part '{}' of rank {} is shorter than its "
                                                            "rows (written by another build?)", part_path(r), r));
            }
            file.write(buffer.data(), static_cast<std::streamsize>(chunk));
            left -= chunk;
          }
        }
      }
    }
    // The trailer: each chunk's CRC-32, read back from what was written (rank 0's rows and the merged parts).
    file.flush();
    std::ifstream back(tmp, std::ios::binary);
    std::string trailer;
    std::vector<char> chunk;
    for (const auto& e : layout) {
      const size_t rb = row_bytes(e.dtype, e.shape);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t first = c * chunk_rows, last = std::min(n, first + chunk_rows);
        chunk.resize(rb * static_cast<size_t>(last - first));
        back.seekg(static_cast<std::streamoff>(e.offset + rb * static_cast<size_t>(first)));
        if (!back.read(chunk.data(), static_cast<std::streamsize>(chunk.size()))) {
          throw Error(ErrorCategory::kFile, fmt::format("reading back '{}' failed", tmp));
        }
        put_u32_le(trailer, crc_bytes(reinterpret_cast<const unsigned char*>(chunk.data()), chunk.size()));
      }
    }
    file.seekp(static_cast<std::streamoff>(payload_end));
    file.write(trailer.data(), static_cast<std::streamsize>(trailer.size()));
    file.flush();
    if (!file) throw Error(ErrorCategory::kFile, fmt::format("writing '{}' failed (disk full?)", tmp));
  });
  if (group) {
    for (int64_t r = 1; r < world; ++r) std::filesystem::remove(part_path(r));
    group->barrier(kBuildWait);
  }
}

std::unique_ptr<TeacherCache> TeacherCache::open(const std::string& path, uint32_t teacher_fp, uint32_t data_fp,
                                                 const std::optional<TeacherCacheOptions>& expected) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(ErrorCategory::kFile, fmt::format("teacher cache '{}' cannot be opened: {}", path, std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  const size_t length = static_cast<size_t>(st.st_size);
  void* map = length > 0 ? ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(ErrorCategory::kFormat, fmt::format("teacher cache '{}' is empty or cannot be mapped", path));
  std::unique_ptr<TeacherCache> cache(new TeacherCache());
  cache->path_ = path;
  cache->map_ = map;
  cache->length_ = length;

  auto bad = [&](const std::string& why) {
    return Error(ErrorCategory::kFormat,
                 fmt::format("teacher cache '{}' is not usable: {}; delete it and it will be rebuilt", path, why));
  };
  const char* base = static_cast<const char*>(map);
  const std::string head(base, std::min<size_t>(length, 1 << 16));
  const auto end_pos = head.find("\nend\n");
  if (head.rfind(kMagic, 0) != 0 || end_pos == std::string::npos) throw bad("no kdistill cache header");
  std::istringstream in(head.substr(0, end_pos + 1));
  std::string line, word;
  std::getline(in, line);  // magic
  uint32_t file_teacher = 0, file_data = 0;
  int64_t chunk_rows = 0;
  std::string file_options;
  std::vector<Entry> entries;
  {
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      ls >> word;
      if (word == "version") {
        int v = 0;
        ls >> v;
        if (v != 3) throw bad(fmt::format("version {} (this build reads 3)", v));
      } else if (word == "teacher") {
        ls >> std::hex >> file_teacher;
      } else if (word == "data") {
        ls >> std::hex >> file_data;
      } else if (word == "size") {
        ls >> cache->size_;
      } else if (word == "top_k") {
        ls >> cache->top_k_;
      } else if (word == "options") {
        std::getline(ls >> std::ws, file_options);
      } else if (word == "layers") {
        ls >> cache->layers_;
      } else if (word == "attention_layers") {
        ls >> cache->attention_layers_;
      } else if (word == "chunk_rows") {
        ls >> chunk_rows;
      } else if (word == "entry") {
        Entry e;
        std::string dtype;
        ls >> e.name >> dtype;
        e.dtype = storage_dtype(dtype);
        for (int64_t d; ls >> d;) e.shape.push_back(d);
        entries.push_back(e);
      }
    }
  }
  if (cache->size_ <= 0 || entries.empty()) throw bad("the header lists no examples or no entries");
  if (chunk_rows <= 0 || chunk_rows > (int64_t{1} << 30)) throw bad(fmt::format("chunk_rows {}", chunk_rows));
  // Only what build() writes, with shapes the file can hold: a damaged header must drive neither
  // lookup() past its layer vectors nor an entry's rows past the mapping (found by fuzz_teacher_cache).
  constexpr int64_t kMaxLayers = 1 << 16;
  if (cache->layers_ < 0 || cache->layers_ > kMaxLayers || cache->attention_layers_ < 0 ||
      cache->attention_layers_ > kMaxLayers) {
    throw bad(fmt::format("it claims {} layers and {} attention maps", cache->layers_, cache->attention_layers_));
  }
  auto check_layer = [&](const std::string& name, size_t prefix, int64_t count) {
    const std::string digits = name.substr(prefix);
    if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos ||
        std::stoll(digits) >= count) {
      throw bad(fmt::format("entry '{}' names none of the {} layers its header lists", name, count));
    }
  };
  for (const auto& e : entries) {
    if (e.name.rfind("hidden_states.", 0) == 0) {
      check_layer(e.name, 14, cache->layers_);
    } else if (e.name.rfind("attentions.", 0) == 0) {
      check_layer(e.name, 11, cache->attention_layers_);
    } else if (e.name != "logits" && e.name != "topk_logits" && e.name != "topk_indices") {
      throw bad(fmt::format("unknown entry '{}'", e.name));
    }
  }
  size_t offset = (end_pos + 5 + kAlign - 1) / kAlign * kAlign;
  for (auto& e : entries) {
    size_t row = c10::elementSize(e.dtype);  // checked: a product that passes the file's length is refused
    for (int64_t d : e.shape) {
      if (d < 0 || (d > 0 && row > length / static_cast<size_t>(d))) {
        throw bad(fmt::format("entry '{}' has a shape larger than the file", e.name));
      }
      row *= static_cast<size_t>(d);
    }
    if (row > 0 && static_cast<size_t>(cache->size_) > length / row) {
      throw bad(fmt::format("entry '{}' needs more bytes than the file has", e.name));
    }
    e.offset = offset;
    offset = (offset + row * static_cast<size_t>(cache->size_) + kAlign - 1) / kAlign * kAlign;
    if (offset > length) throw bad(fmt::format("{} bytes, too few for its entries (truncated or corrupt)", length));
  }
  const size_t chunks = static_cast<size_t>((cache->size_ + chunk_rows - 1) / chunk_rows);
  const size_t payload_end = offset;
  if (chunks > length / 4 / entries.size() || payload_end + 4 * entries.size() * chunks != length) {
    throw bad(fmt::format("{} bytes instead of {} (truncated or corrupt)", length, payload_end + 4 * entries.size() * chunks));
  }
  // Every chunk against its checksum: one pass over the file, damage named by entry and examples.
  const auto* bytes = static_cast<const unsigned char*>(map);
  size_t k = 0;
  for (const auto& e : entries) {
    size_t row = c10::elementSize(e.dtype);
    for (int64_t d : e.shape) row *= static_cast<size_t>(d);
    for (size_t c = 0; c < chunks; ++c, ++k) {
      const int64_t first = static_cast<int64_t>(c) * chunk_rows, last = std::min(cache->size_, first + chunk_rows);
      const size_t at = e.offset + row * static_cast<size_t>(first), len = row * static_cast<size_t>(last - first);
      if (crc_bytes(bytes + at, len) != get_u32_le(bytes + payload_end + 4 * k)) {
        throw bad(fmt::format("entry '{}', examples {}..{}, does not match its checksum (the file is damaged)", e.name,
                              first, last - 1));
      }
    }
  }
  if (file_teacher != teacher_fp || file_data != data_fp) {
    throw Error(ErrorCategory::kState,
                fmt::format("teacher cache '{}' was written for teacher {:08x} and data {:08x}, but the current teacher is "
                            "{:08x} and the data {:08x}; delete the cache (or use open_or_build, which rebuilds it)",
                            path, file_teacher, file_data, teacher_fp, data_fp));
  }
  if (expected && describe(*expected) != file_options) {
    throw Error(ErrorCategory::kState,
                fmt::format("teacher cache '{}' stores {}, but {} is wanted; delete the cache (or use open_or_build, "
                            "which rebuilds it)",
                            path, file_options, describe(*expected)));
  }
  cache->entries_ = std::move(entries);
  return cache;
}

std::unique_ptr<TeacherCache> TeacherCache::open_or_build(const std::string& path, Teacher& teacher,
                                                          const TensorDataset& dataset,
                                                          const TeacherCacheOptions& options,
                                                          dist::ProcessGroup* group) {
  std::unique_ptr<TeacherCache> cache;
  if (std::filesystem::exists(path)) {
    try {
      cache = open(path, module_fingerprint(*teacher->model()), dataset_fingerprint(dataset), options);
    } catch (const Error& e) {
      if (e.category() != ErrorCategory::kState && e.category() != ErrorCategory::kFormat) throw;
      // stale or damaged: rebuilt below
    }
  }
  bool rebuild = !cache;
  if (group && group->world_size() > 1) {  // every rank builds, or none does
    std::vector<torch::Tensor> flag = {torch::tensor({int64_t(rebuild)}, torch::kInt64)};
    group->all_reduce_max(flag);
    rebuild = flag[0].item<int64_t>() != 0;
  }
  if (!rebuild) return cache;
  cache.reset();
  build(path, teacher, dataset, options, group && group->world_size() > 1 ? group : nullptr);
  return open(path, module_fingerprint(*teacher->model()), dataset_fingerprint(dataset), options);
}

TeacherCache::~TeacherCache() {
  if (map_) ::munmap(map_, length_);
}

torch::Tensor TeacherCache::entry_rows(const Entry& e, const torch::Tensor& indices) const {
  std::vector<int64_t> shape = {size_};
  shape.insert(shape.end(), e.shape.begin(), e.shape.end());
  // from_blob wants a mutable pointer; the map is read-only and index_select only reads it.
  auto all = torch::from_blob(static_cast<char*>(map_) + e.offset, shape, torch::TensorOptions().dtype(e.dtype));
  auto rows = all.index_select(0, indices);
  return e.dtype == torch::kInt32 ? rows.to(torch::kInt64) : rows.to(torch::kFloat32);
}

ModelOutput TeacherCache::lookup(const torch::Tensor& indices) const {
  const auto idx = indices.to(torch::kCPU, torch::kInt64);
  if (idx.numel() > 0 && (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= size_)) {
    throw Error(ErrorCategory::kValue, fmt::format("teacher cache '{}' holds examples 0..{}; asked for {}..{}", path_,
                                                   size_ - 1, idx.min().item<int64_t>(), idx.max().item<int64_t>()));
  }
  ModelOutput out;
  std::map<int64_t, torch::Tensor> hidden, attention;
  for (const auto& e : entries_) {
    auto t = entry_rows(e, idx);
    if (e.name == "logits") out.logits = t;
    else if (e.name.rfind("hidden_states.", 0) == 0) hidden[std::stoll(e.name.substr(14))] = t;
    else if (e.name.rfind("attentions.", 0) == 0) attention[std::stoll(e.name.substr(11))] = t;
    else out.extras[e.name] = t;
  }
  // Layers keep their teacher positions (so negative indices still count from the
  // teacher's last layer); layers that were not stored stay undefined.
  if (!hidden.empty()) out.hidden_states.resize(static_cast<size_t>(layers_));
  for (auto& [layer, t] : hidden) out.hidden_states[static_cast<size_t>(layer)] = t;
  if (!attention.empty()) out.attentions.resize(static_cast<size_t>(attention_layers_));
  for (auto& [layer, t] : attention) out.attentions[static_cast<size_t>(layer)] = t;
  return out;
}

}  // namespace kd::data
