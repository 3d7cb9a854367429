#include "kd/core/script_model.h"

#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/core/error.h"

namespace kd {
namespace {

std::vector<torch::Tensor> tensor_list(const c10::IValue& v, const std::string& what,
                                       const std::string& source) {
  std::vector<torch::Tensor> out;
  if (v.isList()) {
    for (const auto& e : v.toListRef()) {
      if (!e.isTensor()) {
        throw Error(ErrorCategory::kModel,
                    fmt::format("{}: '{}' must be a list of tensors", source, what));
      }
      out.push_back(e.toTensor());
    }
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) {
      if (!e.isTensor()) {
        throw Error(ErrorCategory::kModel,
                    fmt::format("{}: '{}' must hold only tensors", source, what));
      }
      out.push_back(e.toTensor());
    }
  } else if (!v.isNone()) {
    throw Error(ErrorCategory::kModel,
                fmt::format("{}: '{}' must be a list of tensors, got {}", source, what,
                            v.tagKind()));
  }
  return out;
}

}  // namespace

ScriptModel::ScriptModel(torch::jit::Module module, std::string source)
    : module_(std::move(module)), source_(std::move(source)) {
  for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
    std::string name = p.name;
    for (size_t pos; (pos = name.find('.')) != std::string::npos;) name.replace(pos, 1, "__");
    register_parameter(name, p.value, p.value.requires_grad());
  }
  for (const auto& b : module_.named_buffers(/*recurse=*/true)) {
    std::string name = b.name;
    for (size_t pos; (pos = name.find('.')) != std::string::npos;) name.replace(pos, 1, "__");
    register_buffer(name, b.value);
  }
  Module::train(module_.is_training());
}

std::shared_ptr<ScriptModel> ScriptModel::load(const std::string& path,
                                               const torch::Device& device) {
  if (!std::filesystem::exists(path)) {
    throw Error(ErrorCategory::kFile,
                fmt::format("TorchScript file '{}' does not exist; export the model with "
                            "torch.jit.save(torch.jit.script(model), '{}') or fix the path",
                            path, path));
  }
  try {
    return std::make_shared<ScriptModel>(torch::jit::load(path, device), path);
  } catch (const c10::Error& e) {
    // The first line of LibTorch's message says what failed; its backtrace helps nobody here.
    std::string what = e.what_without_backtrace();
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not a loadable TorchScript archive ({}); save it with "
                            "torch.jit.save from a PyTorch at most as new as this LibTorch ({})",
                            path, what.substr(0, what.find('\n')), TORCH_VERSION));
  }
}

void ScriptModel::train(bool on) {
  module_.train(on);
  Module::train(on);
}

ModelOutput ScriptModel::forward(const torch::Tensor& inputs) {
  return convert(module_.forward({inputs}));
}

ModelOutput ScriptModel::convert(const c10::IValue& value) const {
  ModelOutput out;
  if (value.isTensor()) {
    out.logits = value.toTensor();
  } else if (value.isGenericDict()) {
    std::vector<std::string> keys;
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString()) {
        throw Error(ErrorCategory::kModel,
                    fmt::format("{}: forward returned a dict with non-string keys; use Dict[str, ...]",
                                source_));
      }
      const std::string key = item.key().toStringRef();
      keys.push_back(key);
      const auto& v = item.value();
      if (key == "logits" && v.isTensor()) out.logits = v.toTensor();
      else if (key == "hidden_states") out.hidden_states = tensor_list(v, key, source_);
      else if (key == "attentions") out.attentions = tensor_list(v, key, source_);
      else if (v.isTensor()) out.extras[key] = v.toTensor();
    }
    if (!out.logits.defined()) {
      throw Error(ErrorCategory::kModel,
                  fmt::format("{}: forward returned a dict without a 'logits' tensor (keys: {}); "
                              "return {{'logits': ..., 'hidden_states': [...], 'attentions': [...]}}",
                              source_, fmt::join(keys, ", ")));
    }
  } else if (value.isTuple()) {
    const auto& elems = value.toTupleRef().elements();
    if (elems.empty() || !elems[0].isTensor()) {
      throw Error(ErrorCategory::kModel,
                  fmt::format("{}: forward returned a tuple whose first element is not the logits "
                              "tensor; return (logits, hidden_states, attentions)",
                              source_));
    }
    out.logits = elems[0].toTensor();
    if (elems.size() > 1) out.hidden_states = tensor_list(elems[1], "hidden_states", source_);
    if (elems.size() > 2) out.attentions = tensor_list(elems[2], "attentions", source_);
  } else {
    throw Error(ErrorCategory::kModel,
                fmt::format("{}: forward returned {}, expected a logits tensor, a dict with "
                            "'logits' or a tuple (logits, hidden_states, attentions)",
                            source_, value.tagKind()));
  }
  return out;
}

}  // namespace kd
