// kd::find_archive_damage against zip archives written by Python's zipfile and torch.jit.save
// (tests/parity/zip_archives.py), whose damaged entries zipfile itself names; and the loaders that
// call it before LibTorch parses a file.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kd/io/archive_file.h"
#include "kd/core/error.h"
#include "kd/core/script_model.h"
#include "reference.h"

namespace {

using ::testing::HasSubstr;

class ArchiveFile : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(kd::testing::run_python("zip_archives.py")); }
  static void TearDownTestSuite() { delete dir_; }
  static std::string file(const std::string& name) { return *dir_ + "/" + name; }
  static std::string damaged_entry(const std::string& name) {
    std::ifstream in(file("damaged.json"));
    return nlohmann::json::parse(in).at(name).get<std::string>();
  }
  static std::string* dir_;
};
std::string* ArchiveFile::dir_ = nullptr;

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST_F(ArchiveFile, SoundArchivesOfEveryKindPass) {
  for (const char* name : {"scripted.pt", "deflated.zip", "zip64.zip", "commented.zip"}) {
    const auto damage = kd::find_archive_damage(file(name));
    EXPECT_FALSE(damage.has_value()) << name << ": " << damage.value_or("");
  }
  // And what LibTorch's C++ writer produces (tensor entries padded to 64-byte alignment).
  torch::serialize::OutputArchive archive;
  archive.write("w", torch::arange(1000, torch::kFloat32));
  archive.write("empty", torch::empty({0}));
  const auto path = kd::testing::temp_dir("archive_file") + "/written.pt";
  kd::save_archive_atomically(archive, path);
  const auto damage = kd::find_archive_damage(path);
  EXPECT_FALSE(damage.has_value()) << damage.value_or("");
}

TEST_F(ArchiveFile, AChangedByteIsFoundInTheEntryZipfileNames) {
  for (const char* name : {"flipped_code.pt", "flipped_deflate.zip"}) {
    SCOPED_TRACE(name);
    const auto damage = kd::find_archive_damage(file(name));
    ASSERT_TRUE(damage.has_value());
    EXPECT_THAT(*damage, HasSubstr("entry '" + damaged_entry(name) + "'"));
  }
}

TEST_F(ArchiveFile, EveryTruncationIsRefused) {
  const std::string whole = bytes_of(file("scripted.pt"));
  const auto path = kd::testing::temp_dir("archive_cut") + "/cut.pt";
  for (size_t keep = 0; keep < whole.size(); keep += 7) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << whole.substr(0, keep);
    EXPECT_TRUE(kd::find_archive_damage(path).has_value()) << "a prefix of " << keep << " bytes passed";
  }
  EXPECT_THAT(kd::find_archive_damage(file("truncated.pt")).value_or(""), HasSubstr("end-of-central-directory"));
}

TEST_F(ArchiveFile, FilesThatAreNoArchiveAreNamedForWhatTheyLack) {
  const auto dir = kd::testing::temp_dir("archive_not");
  std::ofstream(dir + "/text.pt") << "this is a text file, long enough to hold an end record";
  std::ofstream(dir + "/empty.pt");
  EXPECT_THAT(kd::find_archive_damage(dir + "/text.pt").value_or(""), HasSubstr("no zip end-of-central-directory"));
  EXPECT_THAT(kd::find_archive_damage(dir + "/empty.pt").value_or(""), HasSubstr("too short"));
  EXPECT_THAT(kd::find_archive_damage(dir + "/missing.pt").value_or(""), HasSubstr("cannot be opened"));
}

TEST_F(ArchiveFile, TheTorchScriptLoaderRefusesADamagedFileBeforeLibTorchParsesIt) {
  try {
    kd::ScriptModel::load(file("flipped_code.pt"));
    FAIL() << "a damaged TorchScript file was loaded";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_THAT(e.what(), HasSubstr("flipped_code.pt"));
    EXPECT_THAT(e.what(), HasSubstr(damaged_entry("flipped_code.pt")));
  }
  EXPECT_NO_THROW(kd::ScriptModel::load(file("scripted.pt")));
}

// A model written by another architecture: same names, other widths. Module::load would take the file's
// shapes silently; the check names the nested tensor and both shapes before anything is loaded.
TEST(UnloadableEntry, AParameterOfAnotherShapeIsNamedWithBothShapes) {
  auto make = [](int64_t hidden) {
    return torch::nn::Sequential(torch::nn::Linear(4, hidden), torch::nn::ReLU(), torch::nn::Linear(hidden, 3));
  };
  const auto dir = std::filesystem::temp_directory_path() / "kd_unloadable_entry";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "wide.pt").string();
  auto wide = make(8);
  torch::save(wide, path);

  torch::serialize::InputArchive archive;
  archive.load_from(path);
  auto narrow = make(5);
  const auto before = narrow[0]->as<torch::nn::Linear>()->weight.clone();
  const auto why = kd::find_unloadable_entry(*narrow, archive, "student.");
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(*why, "'student.0.weight': the file holds shape [8, 4], the model's parameter has [5, 4]");
  EXPECT_TRUE(torch::equal(narrow[0]->as<torch::nn::Linear>()->weight, before)) << "the check loaded something";

  torch::serialize::InputArchive same;
  same.load_from(path);
  EXPECT_FALSE(kd::find_unloadable_entry(*make(8), same).has_value());
  std::filesystem::remove_all(dir);
}

}  // namespace
