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

#include "kd/io/atomic_file.h"
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
// Building takes as long as the teacher needs; a rank that dies still fails the others at once.
constexpr double kBuildWait = 6 * 3600.0;

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

// One stored array and where its rows start. The fields of TeacherCache::Entry, which the helpers
// here cannot name (it is private): open() copies them over once the whole file checks out.
struct CacheEntry {
  std::string name;
  torch::Dtype dtype;
  std::vector<int64_t> shape;  // per example
  size_t offset = 0;           // from the file start
};

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

namespace {

// One batch's outputs as named rows: (entry name, [B, ...] tensor on the CPU in its storage dtype).
using Rows = std::vector<std::pair<std::string, torch::Tensor>>;

// The options build() refuses before the teacher runs at all.
void check_build_options(int64_t n, const TeacherCacheOptions& options) {
  if (n == 0) throw Error(ErrorCategory::kValue, "TeacherCache::build: the dataset is empty");
  if (options.top_k() < 0 || options.batch_size() <= 0) {
    throw Error(ErrorCategory::kValue, fmt::format("TeacherCacheOptions: top_k must be >= 0 (got {}) and batch_size > 0 (got {})",
                                                   options.top_k(), options.batch_size()));
  }
  const auto dtype = options.dtype();
  if (dtype != torch::kFloat32 && dtype != torch::kFloat16 && dtype != torch::kBFloat16) {
    throw Error(ErrorCategory::kValue, "TeacherCacheOptions.dtype must be float32, float16 or bfloat16");
  }
}

// Appends the `wanted` layers of `have` as rows "<key>.<layer>". Negative indices count from the last
// layer, as in the losses' layer pairs; the name keeps the resolved index.
void add_layer_rows(Rows& rows, const char* key, const std::vector<int64_t>& wanted,
                    const std::vector<torch::Tensor>& have, const char* unit, torch::Dtype dtype) {
  const auto count = static_cast<int64_t>(have.size());
  for (int64_t i : wanted) {
    const int64_t r = i < 0 ? count + i : i;
    if (r < 0 || r >= count) {
      throw Error(ErrorCategory::kValue, fmt::format("TeacherCache: {} index {} is out of range: the teacher "
                                                     "exposes {} {}", key, i, count, unit));
    }
    rows.emplace_back(fmt::format("{}.{}", key, r), have[r].to(torch::kCPU, dtype));
  }
}

// Outputs for one batch, as the entries to store. `rows` is refilled rather than returned so that
// every batch reuses one vector.
void collect_rows(const ModelOutput& out, const TeacherCacheOptions& options, Rows& rows) {
  rows.clear();
  if (!out.logits.defined()) throw Error(ErrorCategory::kModel, "TeacherCache: the teacher returned no logits");
  if (options.top_k() > 0) {
    if (options.top_k() > out.logits.size(-1)) {
      throw Error(ErrorCategory::kValue, fmt::format("TeacherCache: top_k {} exceeds the {} classes", options.top_k(),
                                                     out.logits.size(-1)));
    }
    auto [values, indices] = out.logits.topk(options.top_k(), -1);
    rows.emplace_back("topk_logits", values.to(torch::kCPU, options.dtype()));
    rows.emplace_back("topk_indices", indices.to(torch::kCPU, torch::kInt32));
  } else {
    rows.emplace_back("logits", out.logits.to(torch::kCPU, options.dtype()));
  }
  add_layer_rows(rows, "hidden_states", options.hidden_states(), out.hidden_states, "layer(s)", options.dtype());
  add_layer_rows(rows, "attentions", options.attentions(), out.attentions, "attention map(s)", options.dtype());
}

// Where everything goes in the file: the text header, each entry's [N, ...] rows from an aligned
// offset, then one CRC-32 per chunk of examples of each entry.
struct Layout {
  std::string head;                 // the text header, "end\n" included
  std::vector<CacheEntry> entries;  // in file order, offsets placed
  int64_t chunk_rows = 0;           // examples per checksummed chunk
  int64_t chunks = 0;               // chunks per entry
  size_t payload_end = 0;           // where the checksum trailer starts
  size_t file_size = 0;             // the trailer included
};

// The layout from the teacher's output for one example, so that every rank knows it before any writes.
Layout plan_layout(Teacher& teacher, const TensorDataset& dataset, const torch::Device& device,
                   const TeacherCacheOptions& options, uint32_t teacher_fp, uint32_t data_fp) {
  const int64_t n = dataset.size();
  const ModelOutput out = teacher->forward(dataset.inputs.slice(0, 0, 1).to(device));
  Rows rows;
  collect_rows(out, options, rows);
  Layout layout;
  std::ostringstream header;
  header << kMagic << "\nversion 3\n"
         << fmt::format("teacher {:08x}\ndata {:08x}\noptions {}\nsize {}\ntop_k {}\nlayers {}\nattention_layers {}\n",
                        teacher_fp, data_fp, describe(options), n, options.top_k(), out.hidden_states.size(),
                        out.attentions.size());
  for (const auto& [name, t] : rows) {
    CacheEntry e{name, t.scalar_type(), t.sizes().slice(1).vec(), 0};
    header << "entry " << name << " " << storage_name(e.dtype);
    for (auto d : e.shape) header << " " << d;
    header << "\n";
    layout.entries.push_back(e);
  }
  size_t widest = 1;
  for (const auto& e : layout.entries) widest = std::max(widest, row_bytes(e.dtype, e.shape));
  layout.chunk_rows = std::clamp<int64_t>(static_cast<int64_t>(kChunkBytes / widest), 1, kChunkRows);
  header << "chunk_rows " << layout.chunk_rows << "\n";
  header << "end\n";
  layout.head = header.str();
  size_t file_size = (layout.head.size() + kAlign - 1) / kAlign * kAlign;
  for (auto& e : layout.entries) {
    e.offset = file_size;
    file_size = (file_size + row_bytes(e.dtype, e.shape) * n + kAlign - 1) / kAlign * kAlign;
  }
  layout.payload_end = file_size;
  layout.chunks = (n + layout.chunk_rows - 1) / layout.chunk_rows;
  layout.file_size = file_size + 4 * layout.entries.size() * static_cast<size_t>(layout.chunks);
  return layout;
}

// What every rank's writer shares: the teacher, the data, the layout and how the batches are split.
struct BuildJob {
  const std::string& path;
  Teacher& teacher;
  const TensorDataset& dataset;
  const TeacherCacheOptions& options;
  torch::Device device;
  const Layout& layout;
  int64_t n;
  int64_t world;
  int64_t batches;

  // Rows [first, last) of rank `r`: its contiguous share of the batches (data-parallel).
  std::pair<int64_t, int64_t> rows_of(int64_t r) const {
    const auto [b0, b1] = dist::shard_range(batches, r, world);
    return std::pair<int64_t, int64_t>{std::min(n, b0 * options.batch_size()), std::min(n, b1 * options.batch_size())};
  }

  // A rank other than 0 writes its rows to PATH.part<rank>, entry after entry; rank 0 copies them in.
  std::string part_path(int64_t r) const { return fmt::format("{}.part{}", path, r); }

  // Where each entry's rows start in rank `r`'s part file.
  std::vector<size_t> part_bases(int64_t r) const {
    const auto [first, last] = rows_of(r);
    std::vector<size_t> base;
    size_t at = 0;
    for (const auto& e : layout.entries) {
      base.push_back(at);
      at += row_bytes(e.dtype, e.shape) * static_cast<size_t>(last - first);
    }
    return base;
  }

  void write_rows(std::fstream& file, const std::vector<size_t>& base, int64_t first, int64_t last) const;
};

// Runs the teacher over rows [first, last), a batch at a time, and writes every entry's rows; entry k's
// row i goes to base[k] + row_bytes · (i − first).
void BuildJob::write_rows(std::fstream& file, const std::vector<size_t>& base, int64_t first, int64_t last) const {
  Rows rows;
  for (int64_t start = first; start < last; start += options.batch_size()) {
    const int64_t end = std::min(last, start + options.batch_size());
    collect_rows(teacher->forward(dataset.inputs.slice(0, start, end).to(device)), options, rows);
    if (rows.size() != layout.entries.size()) {
      throw Error(ErrorCategory::kModel, "TeacherCache: the teacher returned different outputs for different batches");
    }
    for (size_t k = 0; k < rows.size(); ++k) {
      const auto t = rows[k].second.contiguous();
      const size_t rb = row_bytes(layout.entries[k].dtype, layout.entries[k].shape);
      file.seekp(static_cast<std::streamoff>(base[k] + rb * (start - first)));
      file.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(rb * (end - start)));
    }
  }
}

// The rows of rank `rank` (not 0) into its part file, for rank 0 to merge.
void write_part(const BuildJob& job, int64_t rank, int64_t first, int64_t last) {
  const std::string part = job.part_path(rank);
  std::fstream file(part, std::ios::out | std::ios::binary | std::ios::trunc);
  if (!file) throw Error(ErrorCategory::kFile, fmt::format("cannot create the teacher-cache part '{}'", part));
  job.write_rows(file, job.part_bases(rank), first, last);
  file.flush();
  if (!file) throw Error(ErrorCategory::kFile, fmt::format("writing '{}' failed (disk full?)", part));
}

// Rank 0 copies the other ranks' parts into their places in `file`, once they are all written.
void merge_parts(std::fstream& file, const BuildJob& job) {
  std::vector<char> buffer(1 << 20);
  for (int64_t r = 1; r < job.world; ++r) {
    const auto [first, last] = job.rows_of(r);
    const auto pbase = job.part_bases(r);
    std::ifstream in(job.part_path(r), std::ios::binary);
    if (!in) {
      throw Error(ErrorCategory::kFile,
                  fmt::format("the teacher-cache part '{}' of rank {} is missing: with ranks on several machines the "
                              "output folder must be one folder they all share",
                              job.part_path(r), r));
    }
    for (size_t k = 0; k < job.layout.entries.size(); ++k) {
      const auto& e = job.layout.entries[k];
      size_t left = row_bytes(e.dtype, e.shape) * static_cast<size_t>(last - first);
      in.seekg(static_cast<std::streamoff>(pbase[k]));
      file.seekp(static_cast<std::streamoff>(e.offset + row_bytes(e.dtype, e.shape) * first));
      while (left > 0) {
        const size_t chunk = std::min(left, buffer.size());
        if (!in.read(buffer.data(), static_cast<std::streamsize>(chunk))) {
          throw Error(ErrorCategory::kFile, fmt::format("the teacher-cache part '{}' of rank {} is shorter than its "
                                                        "rows (written by another build?)", job.part_path(r), r));
        }
        file.write(buffer.data(), static_cast<std::streamsize>(chunk));
        left -= chunk;
      }
    }
  }
}

// The trailer: each chunk's CRC-32, read back from what was written to `tmp` (rank 0's rows and the
// merged parts), which `file` must have flushed.
std::string chunk_checksums(const std::string& tmp, const Layout& layout, int64_t n) {
  std::ifstream back(tmp, std::ios::binary);
  std::string trailer;
  std::vector<char> chunk;
  for (const auto& e : layout.entries) {
    const size_t rb = row_bytes(e.dtype, e.shape);
    for (int64_t c = 0; c < layout.chunks; ++c) {
      const int64_t first = c * layout.chunk_rows, last = std::min(n, first + layout.chunk_rows);
      chunk.resize(rb * static_cast<size_t>(last - first));
      back.seekg(static_cast<std::streamoff>(e.offset + rb * static_cast<size_t>(first)));
      if (!back.read(chunk.data(), static_cast<std::streamsize>(chunk.size()))) {
        throw Error(ErrorCategory::kFile, fmt::format("reading back '{}' failed", tmp));
      }
      put_u32_le(trailer, crc_bytes(reinterpret_cast<const unsigned char*>(chunk.data()), chunk.size()));
    }
  }
  return trailer;
}

// Rank 0's whole file, written to `tmp` for write_atomically: the header, its own rows [first, last),
// the other ranks' parts, then the trailer.
void write_cache_file(const std::string& tmp, const BuildJob& job, int64_t first, int64_t last,
                      dist::ProcessGroup* group) {
  const Layout& layout = job.layout;
  std::fstream file(tmp, std::ios::out | std::ios::binary | std::ios::trunc);
  if (!file) throw Error(ErrorCategory::kFile, fmt::format("cannot create '{}'", tmp));
  file.write(layout.head.data(), static_cast<std::streamsize>(layout.head.size()));
  // Size the file up front so a short file is recognisably truncated.
  file.seekp(static_cast<std::streamoff>(layout.file_size - 1));
  file.put('\0');
  std::vector<size_t> base;
  for (const auto& e : layout.entries) base.push_back(e.offset + row_bytes(e.dtype, e.shape) * first);
  job.write_rows(file, base, first, last);
  if (group) {
    group->barrier(kBuildWait);
    merge_parts(file, job);
  }
  file.flush();
  const std::string trailer = chunk_checksums(tmp, layout, job.n);
  file.seekp(static_cast<std::streamoff>(layout.payload_end));
  file.write(trailer.data(), static_cast<std::streamsize>(trailer.size()));
  file.flush();
  if (!file) throw Error(ErrorCategory::kFile, fmt::format("writing '{}' failed (disk full?)", tmp));
}

}  // namespace

void TeacherCache::build(const std::string& path, Teacher& teacher, const TensorDataset& dataset,
                         const TeacherCacheOptions& options, dist::ProcessGroup* group) {
  const int64_t n = dataset.size();
  check_build_options(n, options);
  const auto params = teacher->parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  const uint32_t teacher_fp = module_fingerprint(*teacher->model());
  const uint32_t data_fp = dataset_fingerprint(dataset);
  const Layout layout = plan_layout(teacher, dataset, device, options, teacher_fp, data_fp);

  // Data-parallel: each rank runs the teacher over its contiguous share of the batches.
  const int64_t world = group ? group->world_size() : 1;
  const int64_t rank = group ? group->rank() : 0;
  const int64_t batches = (n + options.batch_size() - 1) / options.batch_size();
  const BuildJob job{path, teacher, dataset, options, device, layout, n, world, batches};
  // Plain variables, not a structured binding: the lambda below captures them (C++17 forbids that).
  const auto my_rows = job.rows_of(rank);
  const int64_t my_first = my_rows.first, my_last = my_rows.second;

  if (rank != 0) {
    write_part(job, rank, my_first, my_last);
    group->barrier(kBuildWait);  // parts written
    group->barrier(kBuildWait);  // rank 0 merged them and renamed the cache into place
    return;
  }

  write_atomically(path, [&](const std::string& tmp) { write_cache_file(tmp, job, my_first, my_last, group); });
  if (group) {
    for (int64_t r = 1; r < world; ++r) std::filesystem::remove(job.part_path(r));
    group->barrier(kBuildWait);
  }
}

namespace {

// A kFormat refusal: the file is truncated, damaged or no cache at all, and rebuilding it is the fix.
Error unusable(const std::string& path, const std::string& why) {
  return Error(ErrorCategory::kFormat,
               fmt::format("teacher cache '{}' is not usable: {}; delete it and it will be rebuilt", path, why));
}

// Maps `path` read-only and sets `length`; the descriptor is closed at once, as the mapping outlives it.
void* map_file(const std::string& path, size_t& length) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(ErrorCategory::kFile, fmt::format("teacher cache '{}' cannot be opened: {}", path, std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  length = static_cast<size_t>(st.st_size);
  void* map = length > 0 ? ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(ErrorCategory::kFormat, fmt::format("teacher cache '{}' is empty or cannot be mapped", path));
  return map;
}

// What the text header says, unchecked; open() gives its fields to the cache once the whole file checks out.
struct CacheHeader {
  size_t end = 0;           // where "\nend\n" starts
  uint32_t teacher = 0;     // the teacher's fingerprint
  uint32_t data = 0;        // the data's fingerprint
  std::string options;      // describe() of what was stored
  int64_t size = 0;         // examples
  int64_t top_k = 0;
  int64_t layers = 0;
  int64_t attention_layers = 0;
  int64_t chunk_rows = 0;
  std::vector<CacheEntry> entries;  // offsets not placed yet
};

// Reads the header, within the file's first 64 KiB, a "key value..." line at a time; unknown keys are skipped.
CacheHeader parse_header(const std::string& path, const char* base, size_t length) {
  const std::string head(base, std::min<size_t>(length, 1 << 16));
  CacheHeader h;
  h.end = head.find("\nend\n");
  if (head.rfind(kMagic, 0) != 0 || h.end == std::string::npos) throw unusable(path, "no kdistill cache header");
  std::istringstream in(head.substr(0, h.end + 1));
  // `word` lives outside the loop: a blank line reads no key and so repeats the previous line's, which
  // decides how such a damaged header is refused.
  std::string line, word;
  std::getline(in, line);  // magic
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    ls >> word;
    if (word == "version") {
      int v = 0;
      ls >> v;
      if (v != 3) throw unusable(path, fmt::format("version {} (this build reads 3)", v));
    } else if (word == "teacher") {
      ls >> std::hex >> h.teacher;
    } else if (word == "data") {
      ls >> std::hex >> h.data;
    } else if (word == "size") {
      ls >> h.size;
    } else if (word == "top_k") {
      ls >> h.top_k;
    } else if (word == "options") {
      std::getline(ls >> std::ws, h.options);
    } else if (word == "layers") {
      ls >> h.layers;
    } else if (word == "attention_layers") {
      ls >> h.attention_layers;
    } else if (word == "chunk_rows") {
      ls >> h.chunk_rows;
    } else if (word == "entry") {
      CacheEntry e;
      std::string dtype;
      ls >> e.name >> dtype;
      e.dtype = storage_dtype(dtype);
      for (int64_t d; ls >> d;) e.shape.push_back(d);
      h.entries.push_back(e);
    }
  }
  return h;
}

// Refuses a layer entry, "<key>.<i>" with `prefix` the length of "<key>.", whose <i> is not one of `count`.
void check_layer_entry(const std::string& path, const std::string& name, size_t prefix, int64_t count) {
  const std::string digits = name.substr(prefix);
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos ||
      std::stoll(digits) >= count) {
    throw unusable(path, fmt::format("entry '{}' names none of the {} layers its header lists", name, count));
  }
}

// The header's counts and entry names, before any of them sizes or indexes anything.
void check_header(const std::string& path, const CacheHeader& h) {
  if (h.size <= 0 || h.entries.empty()) throw unusable(path, "the header lists no examples or no entries");
  if (h.chunk_rows <= 0 || h.chunk_rows > (int64_t{1} << 30)) {
    throw unusable(path, fmt::format("chunk_rows {}", h.chunk_rows));
  }
  // Only what build() writes, with shapes the file can hold: a damaged header must drive neither
  // lookup() past its layer vectors nor an entry's rows past the mapping (found by fuzz_teacher_cache).
  constexpr int64_t kMaxLayers = 1 << 16;
  if (h.layers < 0 || h.layers > kMaxLayers || h.attention_layers < 0 || h.attention_layers > kMaxLayers) {
    throw unusable(path, fmt::format("it claims {} layers and {} attention maps", h.layers, h.attention_layers));
  }
  for (const auto& e : h.entries) {
    if (e.name.rfind("hidden_states.", 0) == 0) {
      check_layer_entry(path, e.name, 14, h.layers);
    } else if (e.name.rfind("attentions.", 0) == 0) {
      check_layer_entry(path, e.name, 11, h.attention_layers);
    } else if (e.name != "logits" && e.name != "topk_logits" && e.name != "topk_indices") {
      throw unusable(path, fmt::format("unknown entry '{}'", e.name));
    }
  }
}

// Places each entry's rows where build() put them, refusing any shape or example count whose bytes
// would run past the file's `length`; returns where the checksum trailer starts.
size_t place_entries(const std::string& path, CacheHeader& h, size_t length) {
  size_t offset = (h.end + 5 + kAlign - 1) / kAlign * kAlign;
  for (auto& e : h.entries) {
    size_t row = c10::elementSize(e.dtype);  // checked: a product that passes the file's length is refused
    for (int64_t d : e.shape) {
      if (d < 0 || (d > 0 && row > length / static_cast<size_t>(d))) {
        throw unusable(path, fmt::format("entry '{}' has a shape larger than the file", e.name));
      }
      row *= static_cast<size_t>(d);
    }
    if (row > 0 && static_cast<size_t>(h.size) > length / row) {
      throw unusable(path, fmt::format("entry '{}' needs more bytes than the file has", e.name));
    }
    e.offset = offset;
    offset = (offset + row * static_cast<size_t>(h.size) + kAlign - 1) / kAlign * kAlign;
    if (offset > length) throw unusable(path, fmt::format("{} bytes, too few for its entries (truncated or corrupt)", length));
  }
  return offset;
}

// Every chunk against its checksum: one pass over the file, damage named by entry and examples.
void verify_checksums(const std::string& path, const unsigned char* bytes, const CacheHeader& h, size_t chunks,
                      size_t payload_end) {
  size_t k = 0;
  for (const auto& e : h.entries) {
    size_t row = c10::elementSize(e.dtype);
    for (int64_t d : e.shape) row *= static_cast<size_t>(d);
    for (size_t c = 0; c < chunks; ++c, ++k) {
      const int64_t first = static_cast<int64_t>(c) * h.chunk_rows, last = std::min(h.size, first + h.chunk_rows);
      const size_t at = e.offset + row * static_cast<size_t>(first), len = row * static_cast<size_t>(last - first);
      if (crc_bytes(bytes + at, len) != get_u32_le(bytes + payload_end + 4 * k)) {
        throw unusable(path, fmt::format("entry '{}', examples {}..{}, does not match its checksum (the file is "
                                         "damaged)", e.name, first, last - 1));
      }
    }
  }
}

// A sound file that holds the wrong outputs: written for another teacher or other data, or, when
// `expected` is given, with other options. kState, not kFormat: the file is fine, the request differs.
void check_identity(const std::string& path, const CacheHeader& h, uint32_t teacher_fp, uint32_t data_fp,
                    const std::optional<TeacherCacheOptions>& expected) {
  if (h.teacher != teacher_fp || h.data != data_fp) {
    throw Error(ErrorCategory::kState,
                fmt::format("teacher cache '{}' was written for teacher {:08x} and data {:08x}, but the current teacher is "
                            "{:08x} and the data {:08x}; delete the cache (or use open_or_build, which rebuilds it)",
                            path, h.teacher, h.data, teacher_fp, data_fp));
  }
  if (expected && describe(*expected) != h.options) {
    throw Error(ErrorCategory::kState,
                fmt::format("teacher cache '{}' stores {}, but {} is wanted; delete the cache (or use open_or_build, "
                            "which rebuilds it)",
                            path, h.options, describe(*expected)));
  }
}

}  // namespace

std::unique_ptr<TeacherCache> TeacherCache::open(const std::string& path, uint32_t teacher_fp, uint32_t data_fp,
                                                 const std::optional<TeacherCacheOptions>& expected) {
  size_t length = 0;
  void* map = map_file(path, length);
  // The cache owns the mapping from here, so every refusal below unmaps it.
  std::unique_ptr<TeacherCache> cache(new TeacherCache());
  cache->path_ = path;
  cache->map_ = map;
  cache->length_ = length;

  CacheHeader header = parse_header(path, static_cast<const char*>(map), length);
  check_header(path, header);
  const size_t payload_end = place_entries(path, header, length);
  const size_t chunks = static_cast<size_t>((header.size + header.chunk_rows - 1) / header.chunk_rows);
  const size_t count = header.entries.size();
  if (chunks > length / 4 / count || payload_end + 4 * count * chunks != length) {
    throw unusable(path, fmt::format("{} bytes instead of {} (truncated or corrupt)", length,
                                     payload_end + 4 * count * chunks));
  }
  verify_checksums(path, static_cast<const unsigned char*>(map), header, chunks, payload_end);
  check_identity(path, header, teacher_fp, data_fp, expected);

  cache->size_ = header.size;
  cache->top_k_ = header.top_k;
  cache->layers_ = header.layers;
  cache->attention_layers_ = header.attention_layers;
  for (auto& e : header.entries) {
    cache->entries_.push_back(Entry{std::move(e.name), e.dtype, std::move(e.shape), e.offset});
  }
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
