#include "kd/core/script_export.h"

#include <cctype>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/serialize.h>

#include "kd/io/atomic_file.h"
#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd {
namespace {

// "kd::models::DepthwiseCnnStudentImpl" -> "kd_models_DepthwiseCnnStudentImpl" (a TorchScript class name).
std::string class_name(const torch::nn::Module& m) {
  std::string s;
  for (char c : m.name()) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return "__torch__.kdistill." + s;
}

// A TorchScript module tree mirroring `m`'s: same child names, the same tensors as attributes. The
// tracer then finds each tensor the C++ forward touches as an attribute of `self` (prim::GetAttr), not as
// a constant baked into the graph.
torch::jit::Module mirror(const torch::nn::Module& m, const std::shared_ptr<torch::jit::CompilationUnit>& cu) {
  torch::jit::Module s(class_name(m), cu, /*shouldMangle=*/true);
  for (const auto& p : m.named_parameters(/*recurse=*/false)) {
    if (p.value().defined()) s.register_parameter(p.key(), p.value(), /*is_buffer=*/false);
  }
  for (const auto& b : m.named_buffers(/*recurse=*/false)) {
    if (b.value().defined()) s.register_buffer(b.key(), b.value());
  }
  for (const auto& c : m.named_children()) s.register_module(c.key(), mirror(*c.value(), cu));
  return s;
}

c10::IValue tensor_list(const std::vector<torch::Tensor>& ts) {
  c10::List<torch::Tensor> list;
  for (const auto& t : ts) list.push_back(t);
  return list;
}

}  // namespace

torch::jit::Module trace_to_script(Model& model, const torch::Tensor& example, ScriptExportOptions options) {
  if (!example.defined()) throw Error(ErrorCategory::kValue, "trace_to_script: the example input is undefined");
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module script = mirror(model, cu);
  std::shared_ptr<torch::jit::Graph> graph;
  try {
    auto traced = torch::jit::tracer::trace(
        {example},
        [&](torch::jit::Stack inputs) -> torch::jit::Stack {
          const ModelOutput out = model.forward(inputs.at(0).toTensor());
          if (!out.logits.defined()) {
            throw Error(ErrorCategory::kModel, "trace_to_script: the model's forward returned no logits");
          }
          if (!options.with_layers()) return {out.logits};
          return {c10::ivalue::Tuple::create({out.logits, tensor_list(out.hidden_states), tensor_list(out.attentions)})};
        },
        [](const torch::autograd::Variable&) { return std::string(); },
        /*strict=*/false, /*force_outplace=*/false, &script);
    graph = traced.first->graph;
  } catch (const Error& e) {
    torch::jit::tracer::abandon();
    model.train(was_training);
    throw Error(e.category(), fmt::format("tracing the model on an input {}: {}", shape_string(example), e.message()));
  } catch (const std::exception& e) {
    torch::jit::tracer::abandon();
    model.train(was_training);
    throw Error(ErrorCategory::kValue,
                fmt::format("tracing the model on an input {} failed: {}", shape_string(example), e.what()));
  }
  model.train(was_training);
  // Without with_layers the attention maps and unused states are computed for nothing: drop them.
  torch::jit::EliminateDeadCode(graph);
  auto* fn = cu->create_function(c10::QualifiedName(*script.type()->name(), "forward"), graph);
  script.type()->addMethod(fn);
  script.eval();
  return script;
}

int64_t export_torchscript(Model& model, const torch::Tensor& example, const std::string& path,
                           ScriptExportOptions options) {
  auto script = trace_to_script(model, example, options);
  // In memory first, then checked writes: a full disk is a kd::Error, not a short archive.
  std::ostringstream bytes;
  script.save(bytes);
  write_bytes_atomically(path, bytes.str());
  return static_cast<int64_t>(std::filesystem::file_size(path));
}

}  // namespace kd
