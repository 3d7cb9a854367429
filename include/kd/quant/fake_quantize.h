#pragma once
/// \file
/// Fake quantization with an observer: torch.ao.quantization.FakeQuantize (PyTorch 1.13) in C++.

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"

namespace kd::qat {

/// How a FakeQuantize tracks the range [min, max] of what it sees.
enum class Observer {
  /// Running extremes over every batch seen: min ← min(min, min(x)), max ← max(max, max(x))
  /// (torch.ao MinMaxObserver / PerChannelMinMaxObserver).
  kMinMax,
  /// Exponential moving average: the first batch sets min = min(x), max = max(x); later batches
  /// min ← min + c·(min(x) − min), max ← max + c·(max(x) − max), c = averaging_constant
  /// (torch.ao MovingAverageMinMaxObserver / MovingAveragePerChannelMinMaxObserver).
  kMovingAverage,
};
inline constexpr EnumNames<Observer, 2> kObserverNames{
    {{{Observer::kMovingAverage, "moving_average"}, {Observer::kMinMax, "minmax"}}}};

/// Options for FakeQuantize: the integer grid, the scheme and the observer.
struct FakeQuantizeOptions {
  /// Weights as torch's default QAT weight fake-quant (`default_per_channel_weight_fake_quant`):
  /// signed symmetric int8, per output channel (axis 0) when `per_channel`, with a moving-average
  /// observer (c = 0.01). `narrow_range` uses [−127, 127] (the grid is symmetric around 0, as
  /// int8 GEMM kernels that avoid −128·−128 overflow want) instead of [−128, 127].
  ///
  /// Example: `kd::qat::FakeQuantize w(kd::qat::FakeQuantizeOptions::weight_int8(/*per_channel=*/true, /*narrow_range=*/true));`
  static FakeQuantizeOptions weight_int8(bool per_channel = true, bool narrow_range = true);
  /// Activations as torch's default QAT activation fake-quant (`default_fake_quant` without
  /// reduce_range): unsigned affine [0, 255], per tensor, moving-average observer (c = 0.01).
  ///
  /// Example: `kd::qat::FakeQuantize act(kd::qat::FakeQuantizeOptions::activation_uint8());`
  static FakeQuantizeOptions activation_uint8();

  /// Smallest integer q. The grid must contain 0: quant_min ≤ 0 < quant_max. A grid with
  /// quant_min ≥ 0 is unsigned (torch.quint8), one with quant_min < 0 signed (torch.qint8).
  TORCH_ARG(int64_t, quant_min) = 0;
  /// Largest integer q.
  TORCH_ARG(int64_t, quant_max) = 255;
  /// Symmetric (torch.per_tensor_symmetric / per_channel_symmetric) instead of affine
  /// (per_tensor_affine / per_channel_affine); see functional::quantization_params.
  TORCH_ARG(bool, symmetric) = false;
  /// One scale and zero point per slice along `ch_axis` instead of one for the whole tensor.
  TORCH_ARG(bool, per_channel) = false;
  /// The channel axis of per-channel quantization (negative counts from the end); 0 for the
  /// output channels of Linear and Conv weights.
  TORCH_ARG(int64_t, ch_axis) = 0;
  /// How min and max are tracked.
  TORCH_ARG(Observer, observer) = Observer::kMovingAverage;
  /// c of Observer::kMovingAverage, in (0, 1]; torch's default 0.01.
  TORCH_ARG(double, averaging_constant) = 0.01;
  /// Smallest scale (torch's `eps`, float32 machine epsilon 2⁻²³ by default), so an all-zero
  /// tensor does not give scale 0.
  TORCH_ARG(double, eps) = static_cast<double>(std::numeric_limits<float>::epsilon());

};

}  // namespace kd::qat

namespace kd::functional {

/// Fake quantization, the float result of quantizing and dequantizing:
///
///   y = (clamp(round(x / s) + z, q_min, q_max) − z) · s
///
/// (ATen computes round(x · (1/s)) with round-half-to-even), with one (s, z) for the whole tensor
/// when `ch_axis` is std::nullopt (scale and zero_point hold one element), else one per slice
/// along `ch_axis` (scale and zero_point of length x.size(ch_axis)). The gradient is the clipped
/// straight-through estimator: ∂y/∂x = 1 where q_min ≤ round(x/s) + z ≤ q_max, 0 elsewhere.
/// `zero_point` may be any integer dtype (it is passed to ATen as int32).
///
/// Example: `auto y = kd::functional::fake_quantize(w, scale, zero_point, -127, 127, /*ch_axis=*/0);`
torch::Tensor fake_quantize(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> ch_axis = std::nullopt);

/// Scale and zero point for a range [min_val, max_val] (0-dim or per-channel [C] float32
/// tensors), exactly as torch.ao's `UniformQuantizationObserverBase._calculate_qparams`
/// (1.13). With m₋ = min(min_val, 0) and m₊ = max(max_val, 0):
/// - symmetric: s = max(−m₋, m₊) / ((q_max − q_min) / 2), z = 0 for a signed grid
///   (q_min < 0) and z = ⌊(q_min + q_max) / 2⌋ for an unsigned one (127 for [0, 255], as
///   torch.ao.quantization.FakeQuantize with quant_min/quant_max; a bare MinMaxObserver(quint8)
///   without a range would use 128);
/// - affine: s = (m₊ − m₋) / (q_max − q_min), z = clamp(q_min − round(m₋ / s), q_min, q_max);
/// and s = max(s, eps) in both. Returns (scale float32, zero_point int32), each of shape [1]
/// for a 0-dim range and [C] for a per-channel one. Nothing is checked (see FakeQuantizeImpl).
///
/// Example: `auto [s, z] = kd::functional::quantization_params(torch::tensor(-1.f), torch::tensor(3.f), 0, 255, false, 1.1920929e-07);`
std::pair<torch::Tensor, torch::Tensor> quantization_params(const torch::Tensor& min_val, const torch::Tensor& max_val,
                                                            int64_t quant_min, int64_t quant_max, bool symmetric,
                                                            double eps);

}  // namespace kd::functional

namespace kd::qat {

/// Simulated quantization for quantization-aware training, with the semantics of
/// torch.ao.quantization.FakeQuantize (1.13):
///
///   forward(x):  if observer enabled:   update [min, max] from x (see Observer), then
///                                       (scale, zero_point) ← functional::quantization_params(min, max, ...)
///                if fake quant enabled: return functional::fake_quantize(x, scale, zero_point, q_min, q_max[, ch_axis])
///                else                   return x
///
/// The output has x's dtype; the observer works in float32 on x.detach(). The gradient is the
/// clipped straight-through estimator of ATen's fake-quantize kernels.
///
/// State is kept in registered buffers, so state_dict / torch::save / checkpoints hold it:
/// "scale" (float32 [1] or [C]), "zero_point" (int32, same shape), "min_val", "max_val"
/// (float32; per tensor 0-dim, +∞/−∞ before the first batch; per channel [C], empty before the
/// first batch), "fake_quant_enabled", "observer_enabled" (uint8 [1]). Buffers are only ever
/// changed in place (resize_ + copy_), so loading a checkpoint whose per-channel buffers have
/// another length works. The options themselves (grid, scheme, observer) are not buffers: a
/// module that loads a checkpoint must be configured the same way first.
///
/// A default-constructed FakeQuantize is a disabled placeholder (both switches off: forward is
/// the identity and costs nothing). Models register such placeholders at the points whose
/// activations an int8 deployment would quantize and call them in forward; kd::qat::prepare()
/// configures and enables them. A FakeQuantize constructed with options starts enabled.
///
/// Throws kd::Error (kValue) for a grid without 0 or with quant_min ≥ quant_max, a grid wider
/// than 2³¹ values, averaging_constant ∉ (0, 1] or eps ≤ 0; (kShape) when a per-channel input
/// has fewer dimensions than ch_axis needs or a different channel count than the observer saw.
///
/// Example:
/// ```
/// kd::qat::FakeQuantize act;                                        // placeholder: identity
/// act->configure(kd::qat::FakeQuantizeOptions::activation_uint8());
/// act->enable_fake_quant(true); act->enable_observer(true);
/// auto y = act(x);                                                  // observed and fake-quantized
/// act->enable_observer(false);                                      // freeze the scale
/// ```
class FakeQuantizeImpl : public torch::nn::Cloneable<FakeQuantizeImpl> {
 public:
  /// A disabled placeholder with activation_uint8() options.
  FakeQuantizeImpl();
  /// An enabled fake quantizer.
  explicit FakeQuantizeImpl(FakeQuantizeOptions options);

  /// Validates the options and (re)creates the buffers in their initial state.
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  /// Turns fake quantization on or off (off: forward returns x, the observer may still run).
  void enable_fake_quant(bool enabled = true);
  /// Turns the observer on or off (off: scale and zero point stay as they are).
  void enable_observer(bool enabled = true);
  bool fake_quant_enabled() const;
  bool observer_enabled() const;

  /// (scale, zero_point) from the observed range now, without changing the buffers;
  /// ([1.0], [0]) before anything was observed, as torch does.
  std::pair<torch::Tensor, torch::Tensor> calculate_qparams() const;
  /// Whether the observer has seen at least one batch.
  bool observed() const;

  /// New options (grid, scheme, observer): the observer state, scale and zero point are reset
  /// (scale [1] = 1, zero point [1] = 0, no range observed) on the buffers' current device; the
  /// two switches are left as they are.
  void configure(FakeQuantizeOptions options);
  /// Sets scale and zero point directly (e.g. read from an int8 file): shapes [1] per tensor or
  /// [C] per channel; throws kd::Error (kShape) for other shapes. Typically followed by
  /// enable_observer(false) so they stay.
  void set_qparams(const torch::Tensor& scale, const torch::Tensor& zero_point);

  const FakeQuantizeOptions& options() const { return options_; }
  /// Moves the state to `device`; its dtypes never change (float32 scale and range, int32 zero
  /// point, as torch's observers), so `model->to(torch::kFloat64)` leaves them as they are.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  /// Keeps the state's dtypes (see above): a no-op.
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;
  /// "kd::qat::FakeQuantize(quant_min=0, quant_max=255, affine, per_tensor, observer=moving_average(0.01), ...)"
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor scale, zero_point, min_val, max_val;

 private:
  void observe(const torch::Tensor& x);
  void reset_state();

  FakeQuantizeOptions options_;
  bool start_enabled_;
  torch::Tensor fake_quant_enabled_, observer_enabled_;
};
TORCH_MODULE(FakeQuantize);

}  // namespace kd::qat
