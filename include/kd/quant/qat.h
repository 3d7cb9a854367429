#pragma once
/// \file
/// Quantization-aware training: int8 fake quantization of a model's Linear/Conv weights and of
/// the activation points it declares.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "kd/quant/fake_quantize.h"

namespace kd::qat {

/// Options for kd::qat::prepare().
struct Options {
  /// The FakeQuantize options of weight sites: FakeQuantizeOptions::weight_int8(per_channel,
  /// narrow_range) with the weight observer and averaging constant.
  FakeQuantizeOptions weight_options() const;
  /// The FakeQuantize options of activation sites: FakeQuantizeOptions::activation_uint8() with
  /// the activation observer and averaging constant.
  FakeQuantizeOptions activation_options() const;

  /// Integer width. Only 8 is supported (the int8 export stores int8); others are kd::Error (kValue).
  TORCH_ARG(int64_t, bits) = 8;
  /// Weights: one scale per output channel (axis 0 of Linear [out, in] and Conv [out, in/g, k...])
  /// instead of one per tensor.
  TORCH_ARG(bool, per_channel) = true;
  /// Weights: the symmetric grid [−127, 127] instead of [−128, 127].
  TORCH_ARG(bool, narrow_range) = true;
  /// How weight ranges are tracked. Default: a moving average (c = averaging_constant), as
  /// torch's default QAT weight fake-quant (`default_per_channel_weight_fake_quant`,
  /// MovingAveragePerChannelMinMaxObserver). Observer::kMinMax keeps the running extremes instead.
  TORCH_ARG(Observer, weight_observer) = Observer::kMovingAverage;
  /// Fake-quantize the model's activation points (its kd::qat::FakeQuantize placeholders).
  TORCH_ARG(bool, activations) = true;
  /// How activation ranges are tracked (unsigned affine [0, 255], per tensor).
  TORCH_ARG(Observer, activation_observer) = Observer::kMovingAverage;
  /// c of the moving-average observers, in (0, 1]; torch's 0.01.
  TORCH_ARG(double, averaging_constant) = 0.01;
  /// ECMAScript regexes searched in the submodule names (as `named_modules()` gives them, e.g.
  /// "features.0", "head"); weight layers and activation points that match stay in float
  /// ("sensitive layers may stay in higher precision"). Use ^...$ for an exact name.
  TORCH_ARG(std::vector<std::string>, exclude) = {};
};

/// What a quantization site quantizes.
enum class SiteKind {
  kWeight,      ///< a Linear/Conv weight
  kActivation,  ///< an activation point (a kd::qat::FakeQuantize the model calls in forward)
};

/// One entry of QATImpl::sites().
struct SiteInfo {
  std::string name;    ///< the submodule's name, as named_modules() gives it
  SiteKind kind;
  std::string type;    ///< "Linear", "Conv1d", "Conv2d", "Conv3d" or "FakeQuantize"
  bool excluded;       ///< left in float (matched Options::exclude, or an activation with activations(false))
};

/// A fake-quantized weight (QATImpl::weight_sites()).
struct WeightSite {
  std::string name;        ///< the layer's name; its weight parameter is "<name>.weight"
  std::string type;        ///< "Linear", "Conv1d", "Conv2d" or "Conv3d"
  torch::Tensor weight;    ///< W₀, the layer's registered (float, trained) weight parameter
  FakeQuantize quantizer;  ///< its fake quantizer, registered in the QAT module
};

/// A fake-quantized activation point (QATImpl::activation_sites()).
struct ActivationSite {
  std::string name;        ///< the placeholder's name in the model
  FakeQuantize quantizer;  ///< the model's own placeholder, configured and enabled
};

/// Quantization-aware training (torch.ao QAT semantics) of a LibTorch model:
///
///   Linear/Conv:       y = x ∗ fq_w(W₀) + b,   fq_w = symmetric int8 fake quantization of the weight
///                      (per output channel by default, s_c = max|W₀[c]| / 127 on [−127, 127], z = 0)
///   activation point:  a ↦ fq_a(a),            fq_a = affine uint8 fake quantization, moving-average range
///
/// where fake quantization is (clamp(round(x/s) + z, q_min, q_max) − z)·s and gradients use the
/// clipped straight-through estimator (∂fq/∂x = 1 inside the grid, 0 where x was clamped), so W₀
/// keeps training in float.
///
/// Weights. LibTorch parent modules call their Linear/Conv members directly (a non-virtual
/// forward, no hooks), so layers cannot be wrapped or swapped. Instead the weight is
/// re-parametrised as LoRA does: each layer's registered parameter stays W₀ (what optimizers and
/// checkpoints see) and refresh() assigns the layer's `weight` member fq_w(W₀), a differentiable
/// function of W₀. The weight fake quantizers are registered in this module under the layer name
/// with '.' → '_' ("features.0" → "features_0"), so a checkpoint of the QAT module holds their
/// scales and observer state. Layers: torch::nn::Linear, Conv1d, Conv2d, Conv3d.
///
/// Weight observer: torch's default QAT weight fake-quant tracks per-channel weight ranges with
/// a moving average (c = 0.01), which is followed here (Options::weight_observer). The first
/// refresh() sets the range from W₀ itself, so a model starting QAT from trained float weights
/// starts at the exact per-channel max |W₀|; the average then follows W₀ slowly, and weights that
/// move beyond it are clamped (with zero gradient) until the range catches up.
///
/// Activations. A LibTorch model cannot be given new activation quantizers from outside, so it
/// declares the points itself: default-constructed kd::qat::FakeQuantize submodules (identity
/// placeholders) called in its forward. prepare() configures every placeholder that is not
/// excluded (Options::activation_options()) and turns it on. A model without placeholders gets
/// only its weights quantized (a warning says so).
///
/// Observers run on every fake-quantized forward (and on every refresh() for weights) while
/// enabled, in training and in eval mode alike, as torch's FakeQuantize: freeze_observers() late
/// in training (torch's recipe) fixes the scales, and evaluation passes with observers on do
/// move the activation ranges.
///
/// Throws kd::Error: kValue for bits ≠ 8, a null model or an averaging constant ∉ (0, 1]; kConfig
/// for an invalid exclude regex (naming it) or when no Linear/Conv layer is left to quantize
/// (naming the layers seen); kModel for a TorchScript model.
///
/// Example:
/// ```
/// auto qat = kd::qat::prepare(student.ptr(), kd::qat::Options().bits(8).exclude({"^head$"}));
/// for (auto& batch : loader) {
///   qat->refresh();                       // before every forward
///   auto loss = criterion(student->forward(batch.data), batch.target);
///   loss.backward(); opt.step(); opt.zero_grad();
/// }
/// qat->freeze_observers();                // scales fixed for the last epochs
/// kd::qat::export_int8(*student, *qat, "student.int8.pt");
/// ```
class QATImpl : public torch::nn::Module {
 public:
  QATImpl(std::shared_ptr<torch::nn::Module> model, Options options = {});

  /// Writes fq_w(W₀) into every quantized layer's `weight` member (observing W₀ first while the
  /// weight observers are on). Call before every forward, in the grad mode of that forward: a
  /// refresh() under torch::NoGradGuard gives weights with no path back to W₀. A weight quantizer
  /// whose observer is off but that has never observed anything observes W₀ once (unlike torch,
  /// which would quantize with its default scale 1), so freezing observers before the first
  /// refresh() still gives proper weight scales.
  void refresh();
  /// Fake quantization on or off at every site (weights and activations). Off: refresh() writes
  /// W₀ itself and activation points are identities; the observers may still run (calibration).
  void enable_fake_quant(bool enabled = true);
  /// Observers on or off at every site; off freezes scales and zero points.
  void enable_observers(bool enabled = true);
  /// enable_observers(false).
  void freeze_observers();
  /// Whether any site's observer is on (e.g. to switch them off around an evaluation and back).
  bool observers_enabled() const;
  /// Back to the float model: every quantized layer's `weight` is W₀ again and every site's fake
  /// quantization and observer are off (a later refresh() writes W₀;
  /// enable_fake_quant(true) + enable_observers(true) resume QAT with the observed state).
  void restore();

  /// Every weight layer and activation point seen, in model order, quantized or excluded.
  std::vector<SiteInfo> sites() const;
  /// "QAT int8: 3 weight sites (per-channel, [-127, 127]), 2 activation points; float: head"
  std::string summary() const;
  /// The quantized weights (excluded layers are not listed).
  const std::vector<WeightSite>& weight_sites() const { return weights_; }
  /// The quantized activation points (excluded ones are not listed).
  const std::vector<ActivationSite>& activation_sites() const { return activations_; }
  /// The model prepare() was given.
  const std::shared_ptr<torch::nn::Module>& model() const { return model_; }
  const Options& options() const { return options_; }

 private:
  Options options_;
  std::shared_ptr<torch::nn::Module> model_;
  std::vector<WeightSite> weights_;
  std::vector<torch::Tensor*> members_;  // each quantized layer's `weight` member, parallel to weights_
  std::vector<std::shared_ptr<torch::nn::Module>> layers_;  // keeps the members alive
  std::vector<ActivationSite> activations_;
  std::vector<SiteInfo> sites_;
};
TORCH_MODULE(QAT);

/// Prepares `model` for quantization-aware training (see QATImpl): its Linear/Conv weights are
/// fake-quantized through refresh() and its activation placeholders are configured and enabled.
///
/// Example: `auto qat = kd::qat::prepare(student.ptr(), kd::qat::Options().bits(8).per_channel(true));`
QAT prepare(std::shared_ptr<torch::nn::Module> model, Options options = {});

}  // namespace kd::qat
