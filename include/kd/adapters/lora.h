#pragma once
/// \file
/// LoRA: low-rank adapters on a model's Linear layers, trained while the base weights stay frozen.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace kd::nn {
class LinearImpl;
}  // namespace kd::nn

namespace kd::lora {

/// Options for kd::lora::apply().
struct Options {
  /// Rank r of each adapter (> 0, at most the smaller side of every target).
  TORCH_ARG(int64_t, rank) = 8;
  /// Scale numerator: the update is (alpha / r)·B·A, or (alpha / √r)·B·A with rslora (> 0).
  TORCH_ARG(double, alpha) = 16.0;
  /// rsLoRA (Kalajdzievski 2023): scale alpha/√r, so the update's size does not shrink as r grows.
  TORCH_ARG(bool, rslora) = false;
  /// Which torch::nn::Linear submodules get an adapter, by their names as
  /// named_modules() gives them. A plain target matches a name exactly or as
  /// its last dotted parts ("q_proj" matches "q_proj" and "layers.0.attn.q_proj");
  /// a target starting with "re:" is an ECMAScript regex searched in the name
  /// ("re:^layers\\.[0-3]\\."). Empty: every Linear.
  TORCH_ARG(std::vector<std::string>, targets) = {};
  /// Dropout probability p on the adapter's input, B(A(dropout(x))), in [0, 1); active in training
  /// mode only (the layer's mode). p > 0 needs every target to be a kd::nn::Linear (see LoRAImpl).
  TORCH_ARG(double, dropout) = 0.0;
};

/// How many parameters train, against the whole model (base + adapters).
struct ParameterReport {
  int64_t trainable = 0;
  int64_t total = 0;
  double fraction() const { return total > 0 ? double(trainable) / double(total) : 0.0; }
  /// "trainable 13,568 of 884,042 parameters (1.53 %)"
  std::string to_string() const;
};

/// Low-rank adaptation (Hu et al. 2021) of a model's Linear layers, with PEFT's semantics:
///
///   y = x·W₀ᵀ + b + s·B(A(dropout(x))),   s = α/r (α/√r with rslora),
///
/// A ∈ ℝ^{r×in} Kaiming-uniform (a = √5, as torch.nn.Linear and PEFT: |A| ≤ 1/√in), B ∈ ℝ^{out×r}
/// zeros, so the adapted model starts equal to the base model. apply() freezes every parameter
/// of the model (PEFT's "only the adapters train"; switch any back on with requires_grad_ if a
/// head should train too). A and B are this module's parameters, "<site>.lora_A" /
/// "<site>.lora_B" with the site's dots as '_', so an optimizer over `parameters()` trains only
/// them, save_adapter() writes only them, and the model's own state dict does not change.
///
/// How it reaches the layers. LibTorch modules call their Linear members directly (a
/// non-virtual forward, no forward hooks), so a wrapper cannot be swapped in. Two kinds of sites:
/// - a kd::nn::Linear target gets a real adapter attached (kd::nn::LinearImpl::attach): its own
///   forward adds s·B(A(dropout(x))), so dropout works and the `weight` member is never touched
///   (QAT may fake-quantize it meanwhile);
/// - a plain torch::nn::Linear target is re-parametrised: refresh() writes the effective weight
///   W₀ + s·B·A into its `weight` member (the registered parameter stays W₀), which gives the same
///   output without dropout (the adapter sees x only through the weight). `dropout` > 0 is
///   therefore refused for such targets, naming them: declare them as kd::nn::Linear.
/// Call refresh() before every forward (kd::StagedTrainer does, in stages with a LoRA hook); it is
/// a no-op for attached sites.
/// TorchScript models hold no torch::nn::Linear and are refused with a clear error.
///
/// merge() folds s·B·A into W₀ for export (the model is then an ordinary one: attached adapters go
/// inactive and refresh() leaves W₀ in place); unmerge() takes it back out. Whether the update is
/// merged is a buffer of this module, so a checkpoint of it restores that too.
///
/// Throws kd::Error: kValue for rank ≤ 0, alpha ≤ 0, dropout ∉ [0, 1), dropout > 0 with plain
/// torch::nn::Linear targets, or a rank larger than a target's smaller side; kConfig when no Linear
/// matches the targets (naming the Linear layers there are) or a regex is invalid; kModel for a
/// TorchScript model; kState for a kd::nn::Linear that already has an adapter.
///
/// Example:
/// ```
/// auto lora = kd::lora::apply(student.ptr(), kd::lora::Options().rank(16).alpha(32).dropout(0.1).targets({"q_proj", "v_proj"}));
/// torch::optim::AdamW opt(lora->parameters(), 1e-3);
/// lora->refresh(); auto out = student->forward(x); ...; opt.step();
/// spdlog::info("{}", lora->report().to_string());
/// lora->save_adapter("adapter.pt");   // just A and B
/// lora->merge();                      // W₀ ← W₀ + s·B·A; save the student as usual
/// ```
class LoRAImpl : public torch::nn::Module {
 public:
  LoRAImpl(std::shared_ptr<torch::nn::Module> model, Options options = {});

  /// Re-parametrised sites: writes W₀ + s·B·A into the layer's `weight` (differentiable in A and
  /// B); when merged, writes W₀ (which already holds the update). Attached sites: nothing to do.
  void refresh();
  /// W₀ ← W₀ + s·B·A (no grad); `weight` points at W₀. A and B are kept, so unmerge() can undo it.
  void merge();
  /// W₀ ← W₀ − s·B·A: the base weights again, the adapters still live.
  void unmerge();
  bool merged() const;

  /// The adapted Linear layers' names, in model order.
  std::vector<std::string> targets() const;
  /// The targets that are kd::nn::Linear layers with a real adapter attached (dropout applies there).
  std::vector<std::string> attached_targets() const;
  /// Whether any target is a plain torch::nn::Linear whose `weight` refresh() rewrites.
  bool rewrites_weights() const;
  /// kd::nn::LinearImpl::forward_calls() of each attached target (attached_targets() order).
  std::vector<int64_t> attached_forward_calls() const;
  /// The adapted layers' own weights W₀ and biases (frozen while adapters train).
  std::vector<torch::Tensor> base_parameters() const;
  /// s = α/r, or α/√r with rslora.
  double scale() const;
  /// Trainable and total parameters of the model plus the adapters.
  ParameterReport report() const;

  /// Writes only the adapters (A, B per site) and their rank/alpha/rslora/site
  /// names, atomically. Throws kd::Error (kFile) if the file cannot be written.
  void save_adapter(const std::string& path) const;
  /// Reads adapters written by save_adapter() into this LoRA (same sites and
  /// shapes). Throws kd::Error: kFile (missing), kFormat (not an adapter file),
  /// kShape (a site or shape that differs, naming both). A merged model stays merged, with the loaded update.
  void load_adapter(const std::string& path);

  const Options& options() const { return options_; }

 private:
  class Adapter;
  struct Site {
    std::string name;
    std::shared_ptr<torch::nn::LinearImpl> linear;
    std::shared_ptr<kd::nn::LinearImpl> attached;  // set for kd::nn::Linear targets
    torch::Tensor base;  // the registered weight parameter W₀
    torch::Tensor a, b;
  };
  Options options_;
  std::shared_ptr<torch::nn::Module> model_;
  std::vector<Site> sites_;
  torch::Tensor merged_;  // a buffer, so checkpoints of this module know whether W₀ holds the update
};
TORCH_MODULE(LoRA);

/// Adds LoRA adapters to `model`'s matching Linear layers and freezes the model (see LoRAImpl).
LoRA apply(std::shared_ptr<torch::nn::Module> model, Options options = {});

}  // namespace kd::lora
