// kd::trace_to_script / kd::export_torchscript: the reference CNNs exported from C++, loaded back by
// /usr/bin/python3 (torch.jit.load) and compared there with a plain-PyTorch forward of the documented
// architecture (tests/parity/script_export.py), and by kd::ScriptModel here.
#include <filesystem>

#include <gtest/gtest.h>

#include "kd/kd.h"
#include "reference.h"

namespace {

// Weights and BatchNorm statistics away from their initial values, so a forward that skipped a layer,
// used batch statistics or baked in the wrong tensor would show.
template <typename M>
void perturb(M& model) {
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);
  model->train();
  for (int i = 0; i < 3; ++i) model->forward(torch::randn({8, 1, 28, 28}) * 2 + 0.5);
  model->eval();
}

TEST(ScriptExport, PythonRunsTheExportedCnnsAsTheCppModelsAndAPlainPyTorchForward) {
  kd::models::DepthwiseCnnStudent student;
  kd::models::CnnTeacher teacher;
  perturb(student);
  perturb(teacher);
  const std::string dir = kd::testing::temp_dir("script_export");
  const std::string s_path = dir + "/student.ts.pt", t_path = dir + "/teacher.ts.pt";
  const auto example = torch::zeros({1, 1, 28, 28});
  const int64_t bytes = kd::export_torchscript(*student, example, s_path);
  EXPECT_EQ(bytes, static_cast<int64_t>(std::filesystem::file_size(s_path)));
  kd::export_torchscript(*teacher, example, t_path, kd::ScriptExportOptions().with_layers(true));
  EXPECT_FALSE(student->is_training());  // the mode it was in

  kd::testing::Reference ref(kd::testing::run_python("script_export.py", {s_path, t_path}) + "/expected.json");
  const auto x = ref["x"].to(torch::kFloat32);
  torch::NoGradGuard no_grad;
  const auto s_out = student->forward(x);
  const auto t_out = teacher->forward(x);
  // The same float32 operations in the same order: equal up to kernel round-off.
  EXPECT_LT(kd::testing::max_rel_error(ref["student_logits"], s_out.logits.to(torch::kFloat64), 1e-6), 1e-5);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_logits"], t_out.logits.to(torch::kFloat64), 1e-6), 1e-5);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_hidden1"], t_out.hidden_states[1].to(torch::kFloat64), 1e-6), 1e-5);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_attention1"], t_out.attentions[1].to(torch::kFloat64), 1e-7), 1e-4);
  // Against the float64 re-implementation from the file's state_dict (float32 vs float64: looser).
  EXPECT_LT(kd::testing::max_rel_error(ref["student_logits"], ref["student_reference"], 1e-4), 1e-3);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_logits"], ref["teacher_reference"], 1e-4), 1e-3);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_hidden0"], ref["teacher_reference_hidden0"], 1e-4), 1e-3);
  EXPECT_LT(kd::testing::max_rel_error(ref["teacher_attention1"], ref["teacher_reference_attention1"], 1e-6), 1e-3);
  // The C++ names: every parameter and buffer of the student, under its own key.
  EXPECT_EQ(ref.scalar("student_keys"),
            static_cast<double>(student->named_parameters().size() + student->named_buffers().size()));
  EXPECT_EQ(ref.scalar("student_has_fc_weight"), 1);
  EXPECT_EQ(ref.scalar("student_has_bn1_mean"), 1);
}

TEST(ScriptExport, ScriptModelReadsAnExportWithLayersAsTheFullModelOutput) {
  kd::models::CnnTeacher teacher;
  perturb(teacher);
  const std::string path = kd::testing::temp_dir("script_export_layers") + "/teacher.ts.pt";
  kd::export_torchscript(*teacher, torch::zeros({2, 1, 28, 28}), path, kd::ScriptExportOptions().with_layers(true));
  auto script = kd::ScriptModel::load(path);
  script->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({3, 1, 28, 28});
  const auto want = teacher->forward(x);
  const auto got = script->forward(x);
  ASSERT_EQ(got.hidden_states.size(), 2u);
  ASSERT_EQ(got.attentions.size(), 2u);
  EXPECT_TRUE(torch::allclose(got.logits, want.logits, 1e-5, 1e-6));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(torch::allclose(got.hidden_states[i], want.hidden_states[i], 1e-5, 1e-6)) << i;
    EXPECT_TRUE(torch::allclose(got.attentions[i], want.attentions[i], 1e-5, 1e-7)) << i;
  }
}

TEST(ScriptExport, LogitsOnlyGraphDropsTheAttentionMapsAndKeepsTheWeightsAsAttributes) {
  kd::models::DepthwiseCnnStudent student;
  auto script = kd::trace_to_script(*student, torch::zeros({1, 1, 28, 28}));
  const std::string graph = script.get_method("forward").graph()->toString();
  EXPECT_EQ(graph.find("aten::softmax"), std::string::npos) << graph;  // spatial_attention is dead code
  EXPECT_EQ(graph.find("aten::bmm"), std::string::npos) << graph;
  EXPECT_NE(graph.find("prim::GetAttr[name=\"fc\"]"), std::string::npos) << graph;
  // An attribute, not a constant: changing the module's weight changes the output.
  const auto x = torch::randn({2, 1, 28, 28});
  const auto before = script.forward({x}).toTensor();
  torch::NoGradGuard no_grad;
  script.attr("fc").toModule().attr("bias").toTensor().add_(1.0);
  EXPECT_TRUE(torch::allclose(script.forward({x}).toTensor(), before + 1.0, 1e-5, 1e-5));
}

TEST(ScriptExport, TokenModelsKeepTheBatchFreeAtTheTracedLength) {
  torch::manual_seed(5);
  kd::models::TransformerEncoder encoder(
      kd::models::TransformerEncoderOptions().layers(2).d_model(32).heads(4).pad_token(0).max_len(24));
  kd::models::CausalLM lm(kd::models::CausalLMOptions().layers(2).d_model(32).heads(2).max_len(24));
  auto enc_script = kd::trace_to_script(*encoder, torch::ones({1, 24}, torch::kLong));
  auto lm_script = kd::trace_to_script(*lm, torch::ones({1, 24}, torch::kLong),
                                       kd::ScriptExportOptions().with_layers(true));
  encoder->eval();
  lm->eval();
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(1, 256, {3, 24}, torch::kLong);
  tokens.slice(1, 17, 24).fill_(0);  // padding at the end of every row: a different mask than the trace's
  tokens[2].fill_(0);                // and a row of padding only
  EXPECT_TRUE(torch::allclose(enc_script.forward({tokens}).toTensor(), encoder->forward(tokens).logits, 1e-5, 1e-6));
  const auto got = lm_script.forward({tokens}).toTuple()->elements();
  const auto want = lm->forward(tokens);
  EXPECT_TRUE(torch::allclose(got[0].toTensor(), want.logits, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(got[2].toTensorList().get(1), want.attentions[1], 1e-5, 1e-7));
}

TEST(ScriptExport, ErrorsNameTheInputShapeAndTheFile) {
  kd::models::DepthwiseCnnStudent student;
  try {
    kd::trace_to_script(*student, torch::zeros({1, 3, 28, 28}));
    FAIL() << "a 3-channel input was traced";
  } catch (const kd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 3, 28, 28]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kd::trace_to_script(*student, torch::Tensor()), kd::Error);
  try {
    kd::export_torchscript(*student, torch::zeros({1, 1, 28, 28}), "/nonexistent-dir/student.ts.pt");
    FAIL() << "wrote into a missing folder";
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kFile);
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/student.ts.pt"), std::string::npos) << e.what();
  }
  // The model is usable (and in its former mode) after a failed trace.
  student->train();
  EXPECT_THROW(kd::trace_to_script(*student, torch::zeros({1, 3, 28, 28})), kd::Error);
  EXPECT_TRUE(student->is_training());
  EXPECT_NO_THROW(student->forward(torch::zeros({1, 1, 28, 28})));
}

}  // namespace
