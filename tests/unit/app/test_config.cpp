// kd-train's config tree: layering order and errors that name the JSON path.
#include <fstream>

#include <gtest/gtest.h>

#include "config.h"
#include "kd/core/error.h"
#include "reference.h"

namespace {
using kd::app::resolve_config;

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string error_of(const std::vector<std::string>& files, const std::vector<std::string>& sets) {
  try {
    resolve_config(files, sets);
  } catch (const kd::Error& e) {
    EXPECT_TRUE(e.category() == kd::ErrorCategory::kConfig || e.category() == kd::ErrorCategory::kFile);
    return e.what();
  }
  ADD_FAILURE() << "expected kd::Error";
  return "";
}

TEST(Config, DefaultsThenFilesInOrderThenSetOverrides) {
  const auto dir = kd::testing::temp_dir("config");
  const auto a = write(dir, "a.json", R"({"student": {"epochs": 7}, "loss": {"temperature": 2.0}})");
  const auto b = write(dir, "b.json", R"({"student": {"epochs": 9}})");
  auto c = resolve_config({a, b}, {"loss.temperature=5", "train.device=auto", "out=\"x/y\""});
  EXPECT_EQ(c["student"]["epochs"], 9);        // b after a
  EXPECT_EQ(c["loss"]["temperature"], 5);      // --set after files
  EXPECT_EQ(c["train"]["device"], "auto");     // bare word -> string
  EXPECT_EQ(c["out"], "x/y");
  EXPECT_EQ(c["teacher"]["epochs"], 2);        // untouched default
  EXPECT_EQ(c["loss"]["kl_weight"], 0.9);
}

TEST(Config, UnknownKeyNamesThePathAndSuggestsTheCloseMatch) {
  const auto dir = kd::testing::temp_dir("config");
  const auto f = write(dir, "typo.json", R"({"train": {"batchsize": 64}})");
  const auto msg = error_of({f}, {});
  EXPECT_NE(msg.find("typo.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'train.batchsize'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.batch_size'"), std::string::npos) << msg;
  const auto top = error_of({}, {"studnet.epochs=3"});
  EXPECT_NE(top.find("did you mean 'student'"), std::string::npos) << top;
}

TEST(Config, WrongTypeAndOutOfRangeNameValueAndWhatIsAllowed) {
  auto msg = error_of({}, {"train.batch_size=\"big\""});
  EXPECT_NE(msg.find("'train.batch_size' must be an integer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"big\""), std::string::npos) << msg;
  msg = error_of({}, {"loss.kl_weight=1.5"});
  EXPECT_NE(msg.find("'loss.kl_weight' = 1.5 is out of range"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 1]"), std::string::npos) << msg;
  msg = error_of({}, {"loss.temperature=0"});
  EXPECT_NE(msg.find("(0, 100]"), std::string::npos) << msg;
  msg = error_of({}, {"loss=3"});
  EXPECT_NE(msg.find("'loss' must be an object"), std::string::npos) << msg;
  msg = error_of({}, {"nothing"});
  EXPECT_NE(msg.find("key.path=value"), std::string::npos) << msg;
}

TEST(Config, MissingAndMalformedFiles) {
  const auto dir = kd::testing::temp_dir("config");
  auto msg = error_of({dir + "/absent.json"}, {});
  EXPECT_NE(msg.find("absent.json"), std::string::npos) << msg;
  const auto bad = write(dir, "bad.json", "{\"student\": ");
  msg = error_of({bad}, {});
  EXPECT_NE(msg.find("bad.json: not valid JSON"), std::string::npos) << msg;
  const auto arr = write(dir, "arr.json", "[1, 2]");
  msg = error_of({arr}, {});
  EXPECT_NE(msg.find("must be a JSON object"), std::string::npos) << msg;
}

TEST(Config, ShippedConfigsAreValid) {
  for (const char* name : {"fashion_mnist.json", "quick.json"}) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(resolve_config({std::string(KD_SOURCE_DIR) + "/configs/" + name}, {}));
  }
}

}  // namespace
