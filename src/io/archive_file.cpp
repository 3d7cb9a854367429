#include "kd/io/archive_file.h"

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/io/atomic_file.h"
#include "kd/core/model_output.h"

namespace kd {

void save_archive_atomically(torch::serialize::OutputArchive& archive, const std::string& path) {
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_bytes_atomically(path, bytes.str());
}

namespace {

// Zip record signatures and sizes (PKWARE APPNOTE 4.3).
constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr uint32_t kZip64EndLocator = 0x07064b50;
constexpr uint32_t kZip64End = 0x06064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kMaxCommentSize = 65535;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kZip64Marker = 0xFFFFFFFF;
constexpr size_t kChunk = size_t{1} << 20;

uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const unsigned char* p) { return uint32_t{le16(p)} | (uint32_t{le16(p + 2)} << 16); }
uint64_t le64(const unsigned char* p) { return uint64_t{le32(p)} | (uint64_t{le32(p + 4)} << 32); }

// Byte ranges of one file; a range that is not wholly inside the file reads as false, so offsets and
// sizes taken from a damaged archive never drive an allocation larger than the file itself.
class RangeReader {
 public:
  explicit RangeReader(const std::string& path) : in_(path, std::ios::binary) {
    if (in_) {
      in_.seekg(0, std::ios::end);
      size_ = static_cast<uint64_t>(in_.tellg());
    }
  }
  bool is_open() const { return static_cast<bool>(in_); }
  uint64_t size() const { return size_; }
  bool contains(uint64_t offset, uint64_t n) const { return offset <= size_ && n <= size_ - offset; }

  bool read(uint64_t offset, uint64_t n, std::vector<unsigned char>& out) {
    if (!contains(offset, n)) return false;
    out.resize(static_cast<size_t>(n));
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n));
    return static_cast<bool>(in_);
  }

 private:
  std::ifstream in_;
  uint64_t size_ = 0;
};

struct Entry {
  std::string name;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed = 0;
  uint64_t uncompressed = 0;
  uint64_t local_header = 0;
};

// CRC-32 and length of an entry's uncompressed bytes, or a description of why they cannot be had.
struct Content {
  uint32_t crc = 0;
  uint64_t size = 0;
  std::optional<std::string> problem;
};

Content stored_content(RangeReader& file, uint64_t offset, uint64_t n) {
  Content c;
  c.crc = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  std::vector<unsigned char> piece;
  for (uint64_t done = 0; done < n;) {
    const uint64_t len = std::min<uint64_t>(kChunk, n - done);
    if (!file.read(offset + done, len, piece)) return {0, 0, std::string("its bytes cannot be read")};
    c.crc = static_cast<uint32_t>(crc32(c.crc, piece.data(), static_cast<uInt>(len)));
    done += len;
  }
  c.size = n;
  return c;
}

// Raw deflate (zip method 8); stops once the output passes `limit`, so a damaged size bounds the work.
Content deflated_content(RangeReader& file, uint64_t offset, uint64_t n, uint64_t limit) {
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return {0, 0, std::string("zlib could not start inflating")};
  Content c;
  c.crc = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  std::vector<unsigned char> in, out(kChunk);
  int status = Z_OK;
  for (uint64_t done = 0; status != Z_STREAM_END && !c.problem;) {
    if (zs.avail_in == 0) {
      if (done == n) {
        c.problem = "its deflate stream ends early";
        break;
      }
      const uint64_t len = std::min<uint64_t>(kChunk, n - done);
      if (!file.read(offset + done, len, in)) {
        c.problem = "its bytes cannot be read";
        break;
      }
      done += len;
      zs.next_in = in.data();
      zs.avail_in = static_cast<uInt>(len);
    }
    zs.next_out = out.data();
    zs.avail_out = static_cast<uInt>(out.size());
    status = inflate(&zs, Z_NO_FLUSH);
    if (status != Z_OK && status != Z_STREAM_END) {
      c.problem = "its deflate stream is damaged";
      break;
    }
    const size_t produced = out.size() - zs.avail_out;
    c.crc = static_cast<uint32_t>(crc32(c.crc, out.data(), static_cast<uInt>(produced)));
    c.size += produced;
    if (c.size > limit) c.problem = "it inflates to more bytes than its directory records";
  }
  inflateEnd(&zs);
  return c;
}

// The zip64 extra field holds 8-byte values for exactly those fields that read 0xFFFFFFFF, in the
// order uncompressed size, compressed size, local header offset.
bool apply_zip64_extra(const unsigned char* extra, size_t length, Entry& e) {
  while (length >= 4) {
    const uint16_t id = le16(extra), len = le16(extra + 2);
    if (len > length - 4) return false;
    if (id == kZip64ExtraId) {
      const unsigned char* v = extra + 4;
      size_t left = len;
      for (uint64_t* field : {&e.uncompressed, &e.compressed, &e.local_header}) {
        if (*field != kZip64Marker) continue;
        if (left < 8) return false;
        *field = le64(v);
        v += 8;
        left -= 8;
      }
    }
    extra += 4 + len;
    length -= 4 + len;
  }
  return true;
}

}  // namespace

std::optional<std::string> find_archive_damage(const std::string& path) {
  RangeReader file(path);
  if (!file.is_open()) return std::string("it cannot be opened for reading");
  if (file.size() < kEndSize) return fmt::format("at {} bytes it is too short to be a zip archive", file.size());

  // The end-of-central-directory record sits at the very end, after a comment of at most 64 KiB.
  const uint64_t tail_size = std::min<uint64_t>(file.size(), kEndSize + kMaxCommentSize);
  const uint64_t tail_offset = file.size() - tail_size;
  std::vector<unsigned char> tail;
  if (!file.read(tail_offset, tail_size, tail)) return std::string("its end cannot be read");
  std::optional<uint64_t> end_at;
  for (uint64_t i = tail_size - kEndSize + 1; i-- > 0;) {
    if (le32(&tail[i]) == kEndOfCentralDirectory) {
      end_at = i;
      break;
    }
  }
  if (!end_at) return std::string("it has no zip end-of-central-directory record (truncated, or not an archive)");
  const unsigned char* end = &tail[*end_at];
  uint64_t entries = le16(end + 10), dir_size = le32(end + 12), dir_offset = le32(end + 16);
  if (entries == 0xFFFF || dir_size == kZip64Marker || dir_offset == kZip64Marker) {
    const uint64_t end_offset = tail_offset + *end_at;
    std::vector<unsigned char> locator, end64;
    if (end_offset < 20 || !file.read(end_offset - 20, 20, locator) || le32(locator.data()) != kZip64EndLocator)
      return std::string("its zip64 end locator is missing");
    if (!file.read(le64(&locator[8]), 56, end64) || le32(end64.data()) != kZip64End)
      return std::string("its zip64 end-of-central-directory record is missing");
    entries = le64(&end64[32]);
    dir_size = le64(&end64[40]);
    dir_offset = le64(&end64[48]);
  }
  std::vector<unsigned char> dir;
  if (!file.read(dir_offset, dir_size, dir)) return std::string("its central directory lies outside the file");
  if (entries == 0) return std::string("its central directory lists no entries");

  size_t at = 0;
  for (uint64_t k = 0; k < entries; ++k) {
    if (dir.size() - at < kCentralHeaderSize || le32(&dir[at]) != kCentralHeader)
      return fmt::format("its central directory is damaged at entry {} of {}", k + 1, entries);
    const unsigned char* c = &dir[at];
    const size_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
    if (dir.size() - at - kCentralHeaderSize < name_len + extra_len + comment_len)
      return fmt::format("its central directory is damaged at entry {} of {}", k + 1, entries);
    Entry e;
    e.name.assign(reinterpret_cast<const char*>(c + kCentralHeaderSize), name_len);
    e.method = le16(c + 10);
    e.crc = le32(c + 16);
    e.compressed = le32(c + 20);
    e.uncompressed = le32(c + 24);
    e.local_header = le32(c + 42);
    if (!apply_zip64_extra(c + kCentralHeaderSize + name_len, extra_len, e))
      return fmt::format("entry '{}' has a damaged zip64 field", e.name);
    at += kCentralHeaderSize + name_len + extra_len + comment_len;

    // The data starts after the local header's own name and extra field, whose lengths may differ
    // from the central directory's (LibTorch pads the local extra field to align tensors).
    std::vector<unsigned char> local;
    if (!file.read(e.local_header, kLocalHeaderSize, local) || le32(local.data()) != kLocalHeader)
      return fmt::format("entry '{}' has no local header where the directory says", e.name);
    const uint64_t data = e.local_header + kLocalHeaderSize + le16(&local[26]) + le16(&local[28]);
    if (!file.contains(data, e.compressed)) return fmt::format("entry '{}' runs past the end of the file", e.name);

    Content content;
    if (e.method == 0) {
      if (e.compressed != e.uncompressed)
        return fmt::format("stored entry '{}' records two different sizes ({} and {} bytes)", e.name, e.compressed,
                           e.uncompressed);
      content = stored_content(file, data, e.compressed);
    } else if (e.method == Z_DEFLATED) {
      content = deflated_content(file, data, e.compressed, e.uncompressed);
    } else {
      return fmt::format("entry '{}' uses zip compression method {} (only stored and deflated are read)", e.name,
                         e.method);
    }
    if (content.problem) return fmt::format("entry '{}': {}", e.name, *content.problem);
    if (content.size != e.uncompressed)
      return fmt::format("entry '{}' holds {} bytes, its directory records {}", e.name, content.size, e.uncompressed);
    if (content.crc != e.crc)
      return fmt::format("entry '{}' fails its CRC-32 check ({:08x}, recorded {:08x})", e.name, content.crc, e.crc);
  }
  return std::nullopt;
}

namespace {

// Why the tensor `t` read from an archive cannot become a parameter or buffer, or nothing.
std::optional<std::string> unusable_tensor(const torch::Tensor& t) {
  if (!t.defined()) return std::string("it is not a tensor");
  if (t.numel() == 0) return std::nullopt;
  int64_t last = t.storage_offset();  // the furthest element the view reaches
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto need = static_cast<size_t>(last + 1) * t.element_size();
  if (!t.has_storage() || t.storage().data() == nullptr || t.storage().nbytes() < need) {
    return fmt::format("its data holds {} of the {} bytes its shape {} needs",
                       t.has_storage() ? t.storage().nbytes() : 0, need, shape_string(t));
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> find_unloadable_entry(const torch::nn::Module& module,
                                                 torch::serialize::InputArchive& archive, const std::string& prefix) {
  auto check_all = [&](const auto& named, bool is_buffer) -> std::optional<std::string> {
    for (const auto& item : named) {
      torch::Tensor t;
      if (!archive.try_read(item.key(), t, is_buffer)) continue;
      if (auto why = unusable_tensor(t)) return fmt::format("'{}{}': {}", prefix, item.key(), *why);
      if (!is_buffer && item.value().defined() && t.sizes() != item.value().sizes()) {
        return fmt::format("'{}{}': the file holds shape {}, the model's parameter has {}", prefix, item.key(),
                           shape_string(t), shape_string(item.value()));
      }
    }
    return std::nullopt;
  };
  if (auto why = check_all(module.named_parameters(/*recurse=*/false), false)) return why;
  if (auto why = check_all(module.named_buffers(/*recurse=*/false), true)) return why;
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive sub;
    if (!archive.try_read(child.key(), sub)) continue;
    if (auto why = find_unloadable_entry(*child.value(), sub, prefix + child.key() + ".")) return why;
  }
  return std::nullopt;
}

}  // namespace kd
