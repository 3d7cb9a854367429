#include "kd/core/script_model.h"

#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kd/io/archive_file.h"
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

// "hidden_states.3" -> 3 for prefix "hidden_states."; -1 when the key is not of that form.
int64_t indexed_key(const std::string& key, const std::string& prefix) {
  if (key.size() <= prefix.size() || key.compare(0, prefix.size(), prefix) != 0) return -1;
  const std::string digits = key.substr(prefix.size());
  if (digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

}  // namespace

// Tensor-valued dicts name layers "hidden_states.0", "hidden_states.1", ...; they must be contiguous.
void ScriptModel::append_layers(const std::map<int64_t, torch::Tensor>& by_layer, const std::string& what,
                                std::vector<torch::Tensor>& out) const {
  if (by_layer.empty()) return;
  if (!out.empty()) {
    throw Error(ErrorCategory::kModel,
                fmt::format("{}: forward returned both '{}' and '{}.N' entries; use one form", source_, what, what));
  }
  int64_t expected = 0;
  for (const auto& [layer, t] : by_layer) {
    if (layer != expected++) {
      throw Error(ErrorCategory::kModel,
                  fmt::format("{}: '{}.N' entries must be numbered 0, 1, 2, ... without gaps; '{}.{}' is missing",
                              source_, what, what, expected - 1));
    }
    out.push_back(t);
  }
}

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
  if (auto damage = find_archive_damage(path)) {
    throw Error(ErrorCategory::kFormat, fmt::format("'{}' is not a loadable TorchScript archive: {}", path, *damage));
  }
  try {
    auto module = torch::jit::load(path, device);
    if (!module.find_method("forward")) {
      throw Error(ErrorCategory::kFormat,
                  fmt::format("'{}' has no forward method; save a module whose forward(inputs) returns the logits (or a "
                              "dict with \"logits\"): torch.jit.save(torch.jit.script(model), '{}')",
                              path, path));
    }
    return std::make_shared<ScriptModel>(std::move(module), path);
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    // The first line of LibTorch's message says what failed; its backtrace helps nobody here.
    std::string what = e.what_without_backtrace();
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is not a loadable TorchScript archive ({}); save it with "
                            "torch.jit.save from a PyTorch at most as new as this LibTorch ({})",
                            path, what.substr(0, what.find('\n')), TORCH_VERSION));
  } catch (const std::exception& e) {  // torch::jit::ErrorReport and friends from a damaged archive
    std::string what = e.what();
    throw Error(ErrorCategory::kFormat, fmt::format("'{}' is not a loadable TorchScript archive ({})", path,
                                                    what.substr(0, what.find('\n'))));
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
    std::map<int64_t, torch::Tensor> hidden_by_layer, attention_by_layer;
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString()) {
        throw Error(ErrorCategory::kModel,
                    fmt::format("{}: forward returned a dict with non-string keys; use Dict[str, ...]",
                                source_));
      }
      const std::string key = item.key().toStringRef();
      keys.push_back(key);
      const auto& v = item.value();
      if (key == "logits") {
        // Dict[str, List[Tensor]] exports carry the logits as a one-element list.
        const auto list = v.isTensor() ? std::vector<torch::Tensor>{v.toTensor()} : tensor_list(v, key, source_);
        if (list.size() == 1) out.logits = list[0];
      } else if (key == "hidden_states") {
        out.hidden_states = tensor_list(v, key, source_);
      } else if (key == "attentions") {
        out.attentions = tensor_list(v, key, source_);
      } else if (auto layer = indexed_key(key, "hidden_states."); layer >= 0 && v.isTensor()) {
        hidden_by_layer[layer] = v.toTensor();
      } else if (auto layer = indexed_key(key, "attentions."); layer >= 0 && v.isTensor()) {
        attention_by_layer[layer] = v.toTensor();
      } else if (v.isTensor()) {
        out.extras[key] = v.toTensor();
      }
    }
    append_layers(hidden_by_layer, "hidden_states", out.hidden_states);
    append_layers(attention_by_layer, "attentions", out.attentions);
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
