#pragma once
/// \file
/// A TorchScript file seen as a kd::Model.

#include <map>
#include <string>
#include <vector>

#include <torch/script.h>

#include "kd/core/model.h"

namespace kd {

/// Adapts a module saved with `torch.jit.save` to the kd::Model interface.
///
/// Its forward may return
/// - a dict `Dict[str, Tensor]` with `logits` and optionally per-layer
///   entries `hidden_states.0`, `hidden_states.1`, ... and `attentions.0`, ...;
///   any other tensor entry lands in `extras`;
/// - a dict `Dict[str, List[Tensor]]` with `logits` (a one-element list),
///   `hidden_states` and `attentions`;
/// - a tuple `(logits[, hidden_states[, attentions]])`;
/// - a bare logits tensor.
///
/// The script module's parameters are registered here (dots in their names
/// become `__`), so an optimizer over `parameters()` trains the script module.
///
/// Example:
/// ```
/// auto teacher = kd::ScriptModel::load("teacher.pt", torch::kCPU);
/// kd::ModelOutput out = teacher->forward(images);
/// ```
class ScriptModel : public Model {
 public:
  ScriptModel(torch::jit::Module module, std::string source);

  /// Loads `path` onto `device`; kd::Error (kFile) if it is missing, (kFormat) if it is not a
  /// TorchScript archive or has no forward method.
  static std::shared_ptr<ScriptModel> load(const std::string& path,
                                           const torch::Device& device = torch::kCPU);

  ModelOutput forward(const torch::Tensor& inputs) override;
  void train(bool on = true) override;

  torch::jit::Module& module() { return module_; }
  const std::string& source() const { return source_; }

 private:
  ModelOutput convert(const c10::IValue& value) const;
  void append_layers(const std::map<int64_t, torch::Tensor>& by_layer, const std::string& what,
                     std::vector<torch::Tensor>& out) const;

  torch::jit::Module module_;
  std::string source_;
};

}  // namespace kd
