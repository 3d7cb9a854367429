#pragma once
/// \file
/// Exporting a kd::Model (a C++ module) as a TorchScript file, for Python (`torch.jit.load`),
/// C++ programs (`torch::jit::load`, kd::ScriptModel) and other TorchScript runtimes.

#include <cstdint>
#include <string>

#include <torch/arg.h>
#include <torch/script.h>
#include <torch/types.h>

#include "kd/core/model.h"

namespace kd {

/// Options for trace_to_script() and export_torchscript().
struct ScriptExportOptions {
  /// Also return the hidden states and attention maps: forward(x) then returns the tuple
  /// (logits, hidden_states: List[Tensor], attentions: List[Tensor]), which kd::ScriptModel reads
  /// back as a full ModelOutput (e.g. to distil from the exported file as a teacher). Off: forward(x)
  /// returns the logits alone, and the graph holds only what computes them.
  TORCH_ARG(bool, with_layers) = false;
};

/// Records `model`'s forward in eval mode on `example` (LibTorch's tracer, as torch.jit.trace) and
/// returns a TorchScript module holding the graph and, as its attributes, the very parameter and
/// buffer tensors of `model` under the same names and submodule hierarchy ("conv1.weight",
/// "bn1.running_mean"), so `state_dict()` of the exported module in Python has the C++ keys.
///
/// A trace is the sequence of tensor operations that ran for this input: data-dependent control
/// flow is frozen at the branch `example` took (the reference models have none; a TransformerEncoder
/// with dynamic depth records the depth of `example`'s length). The batch dimension stays free for
/// models that never read it as a number (the reference CNNs). The model is put back into the
/// training mode it was in.
///
/// Throws kd::Error (kValue) when `example` is undefined or the model's forward fails on it (naming
/// its shape and the reason).
///
/// Example:
/// ```
/// auto script = kd::trace_to_script(*student, torch::zeros({1, 1, 28, 28}));
/// auto logits = script.forward({images}).toTensor();
/// ```
torch::jit::Module trace_to_script(Model& model, const torch::Tensor& example, ScriptExportOptions options = {});

/// trace_to_script(), then saved to `path` atomically (kd::write_bytes_atomically: a crash leaves the old
/// file or the new one, never half of one). Returns the file's size in bytes. kd::Error (kFile)
/// naming the file when it cannot be written.
///
/// Example:
/// ```
/// kd::export_torchscript(*student, torch::zeros({1, 1, 28, 28}), "runs/default/student.ts.pt");
/// // Python: m = torch.jit.load("runs/default/student.ts.pt"); m(x)
/// ```
int64_t export_torchscript(Model& model, const torch::Tensor& example, const std::string& path,
                           ScriptExportOptions options = {});

}  // namespace kd
