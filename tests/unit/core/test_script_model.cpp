// kd::ScriptModel and kd::Teacher/Student::load on TorchScript files exported
// at test time by /usr/bin/python3 (Debian python3-torch).
#include <gtest/gtest.h>

#include "kd/kd.h"
#include "reference.h"

namespace {

class ScriptModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(kd::testing::run_python("torchscript_models.py")); }
  static void TearDownTestSuite() { delete dir_; }
  static std::string file(const std::string& name) { return *dir_ + "/" + name; }
  static kd::testing::Reference expected() { return kd::testing::Reference(file("expected.json")); }
  static std::string* dir_;
};
std::string* ScriptModelTest::dir_ = nullptr;

TEST_F(ScriptModelTest, DictTeacherGivesPythonLogitsHiddenStatesAndAttentions) {
  auto ref = expected();
  kd::Teacher teacher(kd::TeacherImpl::load(file("dict_teacher.pt")));
  auto out = teacher->forward(ref["x"].to(torch::kFloat32));
  EXPECT_LT(kd::testing::max_rel_error(out.logits, ref["logits"]), 1e-6);
  ASSERT_EQ(out.hidden_states.size(), 1u);
  EXPECT_LT(kd::testing::max_rel_error(out.hidden_states[0], ref["hidden0"]), 1e-6);
  ASSERT_EQ(out.attentions.size(), 1u);
  EXPECT_EQ(out.attentions[0].sizes(), torch::IntArrayRef({3, 1, 5, 5}));
  EXPECT_LT(kd::testing::max_rel_error(out.attentions[0], ref["attention0"]), 1e-6);
  ASSERT_EQ(out.extras.count("aux"), 1u);
  EXPECT_LT(kd::testing::max_rel_error(out.extras["aux"], ref["aux"]), 1e-6);
}

TEST_F(ScriptModelTest, ListDictTupleAndPlainExportsAgree) {
  auto ref = expected();
  const auto x = ref["x"].to(torch::kFloat32);
  for (const char* name : {"list_dict_teacher.pt", "tuple_teacher.pt", "plain_teacher.pt"}) {
    SCOPED_TRACE(name);
    kd::Teacher teacher(kd::TeacherImpl::load(file(name)));
    auto out = teacher->forward(x);
    EXPECT_LT(kd::testing::max_rel_error(out.logits, ref["logits"]), 1e-6);
    if (std::string(name) != "plain_teacher.pt") {
      ASSERT_EQ(out.hidden_states.size(), 1u);
      EXPECT_LT(kd::testing::max_rel_error(out.hidden_states[0], ref["hidden0"]), 1e-6);
      ASSERT_EQ(out.attentions.size(), 1u);
      EXPECT_LT(kd::testing::max_rel_error(out.attentions[0], ref["attention0"]), 1e-6);
    }
  }
}

TEST_F(ScriptModelTest, MissingFileNamesTheFileAndTheFix) {
  try {
    kd::TeacherImpl::load(file("nope.pt"));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find("nope.pt"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("torch.jit.save"), std::string::npos) << e.what();
  }
}

TEST_F(ScriptModelTest, GarbageFileIsAFormatErrorWithoutBacktrace) {
  try {
    kd::TeacherImpl::load(file("not_torchscript.pt"));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFormat);
    EXPECT_NE(msg.find("not_torchscript.pt"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("Exception raised from"), std::string::npos) << msg;  // LibTorch backtrace marker
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST_F(ScriptModelTest, OutputWithoutLogitsNamesTheKeysFound) {
  kd::Teacher teacher(kd::TeacherImpl::load(file("no_logits.pt")));
  try {
    teacher->forward(torch::ones({2, 6}));
    FAIL() << "expected kd::Error";
  } catch (const kd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.category(), kd::ErrorCategory::kModel);
    EXPECT_NE(msg.find("no_logits.pt"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'logits'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("scores"), std::string::npos) << msg;
  }
}

TEST_F(ScriptModelTest, ScriptStudentTrainsItsScriptParametersInPlace) {
  auto ref = expected();
  kd::Student student(kd::StudentImpl::load(file("plain_teacher.pt")));
  auto* script = dynamic_cast<kd::ScriptModel*>(student->model().get());
  ASSERT_NE(script, nullptr);
  const auto before = script->module().attr("fc1").toModule().attr("weight").toTensor().clone();
  EXPECT_EQ(student->parameters().size(), 4u);
  torch::optim::SGD opt(student->parameters(), torch::optim::SGDOptions(0.5));
  auto loss = student->forward(ref["x"].to(torch::kFloat32)).logits.pow(2).sum();
  opt.zero_grad();
  loss.backward();
  opt.step();
  const auto after = script->module().attr("fc1").toModule().attr("weight").toTensor();
  EXPECT_GT((after - before).abs().max().item<double>(), 1e-6);
  student->eval();
  EXPECT_FALSE(script->module().is_training());
}

}  // namespace
