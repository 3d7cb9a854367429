#include "kd/quant/fake_quantize.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kd/core/error.h"

namespace kd {
namespace functional {

torch::Tensor fake_quantize(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> ch_axis) {
  if (!(quant_min < quant_max)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("fake_quantize: quant_min {} must be < quant_max {}", quant_min, quant_max));
  }
  if (scale.numel() != zero_point.numel()) {
    throw Error(ErrorCategory::kShape, fmt::format("fake_quantize: scale [{}] and zero_point [{}] must have as many "
                                                   "elements",
                                                   fmt::join(scale.sizes(), ", "), fmt::join(zero_point.sizes(), ", ")));
  }
  const auto s = scale.to(x.device(), torch::kFloat).reshape({-1});
  const auto z = zero_point.to(x.device(), torch::kInt).reshape({-1});
  if (!ch_axis) {
    if (s.numel() != 1) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("fake_quantize: per-tensor quantization takes one scale, got [{}]; pass ch_axis for "
                              "per-channel scales",
                              fmt::join(scale.sizes(), ", ")));
    }
    return torch::fake_quantize_per_tensor_affine(x, s, z, quant_min, quant_max);
  }
  int64_t axis = *ch_axis;
  if (axis < 0) axis += x.dim();
  if (axis < 0 || axis >= x.dim()) {
    throw Error(ErrorCategory::kShape, fmt::format("fake_quantize: channel axis {} is out of range for a tensor of "
                                                   "shape [{}]",
                                                   *ch_axis, fmt::join(x.sizes(), ", ")));
  }
  if (s.numel() != x.size(axis)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("fake_quantize: {} per-channel scales for a tensor of shape [{}] with {} channels along "
                            "axis {}",
                            s.numel(), fmt::join(x.sizes(), ", "), x.size(axis), axis));
  }
  return torch::fake_quantize_per_channel_affine(x, s, z, axis, quant_min, quant_max);
}

std::pair<torch::Tensor, torch::Tensor> quantization_params(const torch::Tensor& min_val, const torch::Tensor& max_val,
                                                            int64_t quant_min, int64_t quant_max, bool symmetric,
                                                            double eps) {
  // The same tensor operations, in the same order and dtypes, as torch.ao's
  // UniformQuantizationObserverBase._calculate_qparams (1.13), so the float32 results are identical.
  const auto eps_t = torch::full({1}, eps, min_val.options().dtype(torch::kFloat));
  const auto min_neg = torch::min(min_val, torch::zeros_like(min_val));
  auto max_pos = torch::max(max_val, torch::zeros_like(max_val));
  torch::Tensor scale, zero_point;
  if (symmetric) {
    max_pos = torch::max(-min_neg, max_pos);
    scale = max_pos / (static_cast<double>(quant_max - quant_min) / 2);
    scale = torch::max(scale, eps_t);
    // torch: 0 for qint8; for quint8 with a quant_min/quant_max range (as FakeQuantize always has),
    // the down-rounded midpoint of the range.
    const int64_t z = quant_min < 0 ? 0 : (quant_min + quant_max) / 2;
    zero_point = torch::full(min_neg.sizes(), z, min_neg.options().dtype(torch::kInt));
  } else {
    scale = (max_pos - min_neg) / static_cast<double>(quant_max - quant_min);
    scale = torch::max(scale, eps_t);
    zero_point = torch::rsub(torch::round(min_neg / scale).to(torch::kInt), quant_min);
    zero_point = torch::clamp(zero_point, quant_min, quant_max);
  }
  // [1] for a 0-dim range (torch turns 0-dim results into [1] tensors), [C] per channel.
  return {scale.to(torch::kFloat).reshape({-1}), zero_point.to(torch::kInt).reshape({-1})};
}

}  // namespace functional

namespace qat {
namespace {

void validate(const FakeQuantizeOptions& o) {
  if (!(o.quant_min() <= 0 && 0 < o.quant_max())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("FakeQuantize: the integer range [{}, {}] must contain 0 and have quant_min < quant_max "
                            "(e.g. [0, 255] for uint8 activations, [-127, 127] for int8 weights)",
                            o.quant_min(), o.quant_max()));
  }
  if (o.quant_max() - o.quant_min() >= (int64_t{1} << 31)) {
    throw Error(ErrorCategory::kValue, fmt::format("FakeQuantize: the integer range [{}, {}] is wider than 2^31 values",
                                                   o.quant_min(), o.quant_max()));
  }
  if (!(o.averaging_constant() > 0.0 && o.averaging_constant() <= 1.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("FakeQuantize: averaging_constant must be in (0, 1], got {}", o.averaging_constant()));
  }
  if (!(o.eps() > 0.0 && std::isfinite(o.eps()))) {
    throw Error(ErrorCategory::kValue, fmt::format("FakeQuantize: eps must be finite and > 0, got {}", o.eps()));
  }
}

// Gives `buffer` the shape `sizes` in place (the registered buffer and the member stay one tensor).
// A buffer restored from a checkpoint shares the archive's storage, which cannot grow, so a shape change
// swaps in fresh storage instead of resizing.
torch::Tensor& reshape_in_place(torch::Tensor& buffer, torch::IntArrayRef sizes) {
  if (buffer.sizes() != sizes) buffer.set_(torch::empty(sizes, buffer.options()));
  return buffer;
}

// Copies `value` into the buffer `buffer` in place.
void assign(torch::Tensor& buffer, const torch::Tensor& value) {
  reshape_in_place(buffer, value.sizes());
  buffer.copy_(value);
}

}  // namespace

FakeQuantizeOptions FakeQuantizeOptions::weight_int8(bool per_channel, bool narrow_range) {
  return FakeQuantizeOptions()
      .quant_min(narrow_range ? -127 : -128)
      .quant_max(127)
      .symmetric(true)
      .per_channel(per_channel)
      .ch_axis(0)
      .observer(Observer::kMovingAverage)
      .averaging_constant(0.01);
}

FakeQuantizeOptions FakeQuantizeOptions::activation_uint8() {
  return FakeQuantizeOptions()
      .quant_min(0)
      .quant_max(255)
      .symmetric(false)
      .per_channel(false)
      .observer(Observer::kMovingAverage)
      .averaging_constant(0.01);
}

FakeQuantizeImpl::FakeQuantizeImpl() : options_(FakeQuantizeOptions::activation_uint8()), start_enabled_(false) {
  reset();
}

FakeQuantizeImpl::FakeQuantizeImpl(FakeQuantizeOptions options) : options_(std::move(options)), start_enabled_(true) {
  reset();
}

void FakeQuantizeImpl::reset() {
  validate(options_);
  scale = register_buffer("scale", torch::ones({1}, torch::kFloat));
  zero_point = register_buffer("zero_point", torch::zeros({1}, torch::kInt));
  min_val = register_buffer("min_val", torch::empty({0}, torch::kFloat));
  max_val = register_buffer("max_val", torch::empty({0}, torch::kFloat));
  fake_quant_enabled_ = register_buffer("fake_quant_enabled", torch::full({1}, start_enabled_ ? 1 : 0, torch::kUInt8));
  observer_enabled_ = register_buffer("observer_enabled", torch::full({1}, start_enabled_ ? 1 : 0, torch::kUInt8));
  reset_state();
}

void FakeQuantizeImpl::reset_state() {
  torch::NoGradGuard no_grad;
  reshape_in_place(scale, {1}).fill_(1.0);
  reshape_in_place(zero_point, {1}).zero_();
  if (options_.per_channel()) {
    reshape_in_place(min_val, {0});
    reshape_in_place(max_val, {0});
  } else {
    reshape_in_place(min_val, {}).fill_(std::numeric_limits<float>::infinity());
    reshape_in_place(max_val, {}).fill_(-std::numeric_limits<float>::infinity());
  }
}

void FakeQuantizeImpl::configure(FakeQuantizeOptions options) {
  validate(options);
  options_ = std::move(options);
  reset_state();
}

void FakeQuantizeImpl::enable_fake_quant(bool enabled) { fake_quant_enabled_.fill_(enabled ? 1 : 0); }
void FakeQuantizeImpl::enable_observer(bool enabled) { observer_enabled_.fill_(enabled ? 1 : 0); }
bool FakeQuantizeImpl::fake_quant_enabled() const { return fake_quant_enabled_.item<uint8_t>() != 0; }
bool FakeQuantizeImpl::observer_enabled() const { return observer_enabled_.item<uint8_t>() != 0; }

bool FakeQuantizeImpl::observed() const {
  if (min_val.numel() == 0 || max_val.numel() == 0) return false;
  if (min_val.dim() > 0) return true;
  return !(min_val.item<float>() == std::numeric_limits<float>::infinity() &&
           max_val.item<float>() == -std::numeric_limits<float>::infinity());
}

std::pair<torch::Tensor, torch::Tensor> FakeQuantizeImpl::calculate_qparams() const {
  if (!observed()) {
    // torch's check_min_max_valid: "must run observer before calling calculate_qparams", defaults.
    return {torch::ones({1}, scale.options()), torch::zeros({1}, zero_point.options())};
  }
  return functional::quantization_params(min_val, max_val, options_.quant_min(), options_.quant_max(),
                                         options_.symmetric(), options_.eps());
}

void FakeQuantizeImpl::set_qparams(const torch::Tensor& new_scale, const torch::Tensor& new_zero_point) {
  const bool ok = new_scale.dim() == 1 && new_scale.sizes() == new_zero_point.sizes() &&
                  (options_.per_channel() ? new_scale.numel() > 0 : new_scale.numel() == 1);
  if (!ok) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FakeQuantize::set_qparams: scale [{}] and zero_point [{}] must both be [{}]",
                            fmt::join(new_scale.sizes(), ", "), fmt::join(new_zero_point.sizes(), ", "),
                            options_.per_channel() ? "C" : "1"));
  }
  torch::NoGradGuard no_grad;
  assign(scale, new_scale.to(scale.device(), torch::kFloat));
  assign(zero_point, new_zero_point.to(zero_point.device(), torch::kInt));
}

void FakeQuantizeImpl::observe(const torch::Tensor& x_orig) {
  torch::NoGradGuard no_grad;
  const auto x = x_orig.detach().to(torch::kFloat);
  const double c = options_.averaging_constant();
  const bool average = options_.observer() == Observer::kMovingAverage;
  if (!options_.per_channel()) {
    auto [cur_min, cur_max] = torch::aminmax(x);
    torch::Tensor new_min, new_max;
    if (average) {
      // First batch (min = +inf and max = -inf) sets the range; later ones move it by c. torch.where
      // instead of Python's `if` keeps this free of a device sync; the chosen values are the same.
      const auto fresh = (min_val == std::numeric_limits<float>::infinity()) &
                         (max_val == -std::numeric_limits<float>::infinity());
      new_min = torch::where(fresh, cur_min, min_val + c * (cur_min - min_val));
      new_max = torch::where(fresh, cur_max, max_val + c * (cur_max - max_val));
    } else {
      new_min = torch::min(cur_min, min_val);
      new_max = torch::max(cur_max, max_val);
    }
    assign(min_val, new_min);
    assign(max_val, new_max);
    return;
  }
  const int64_t dims = x.dim();
  int64_t axis = options_.ch_axis();
  if (axis < 0) axis += dims;
  if (axis < 0 || axis >= dims) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FakeQuantize: channel axis {} is out of range for an input of shape [{}]",
                            options_.ch_axis(), fmt::join(x.sizes(), ", ")));
  }
  std::vector<int64_t> perm(dims);
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[0], perm[axis]);
  const auto y = torch::flatten(x.permute(perm), 1);
  auto [cur_min, cur_max] = torch::aminmax(y, 1);
  if (min_val.numel() == 0 || max_val.numel() == 0) {
    assign(min_val, cur_min);
    assign(max_val, cur_max);
    return;
  }
  if (min_val.numel() != cur_min.numel()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("FakeQuantize: the input [{}] has {} channels along axis {} but the observer has seen {}; "
                            "configure() it again to start over",
                            fmt::join(x.sizes(), ", "), cur_min.numel(), axis, min_val.numel()));
  }
  if (average) {
    assign(min_val, min_val + c * (cur_min - min_val));
    assign(max_val, max_val + c * (cur_max - max_val));
  } else {
    assign(min_val, torch::min(cur_min, min_val));
    assign(max_val, torch::max(cur_max, max_val));
  }
}

torch::Tensor FakeQuantizeImpl::forward(const torch::Tensor& x) {
  if (observer_enabled()) {
    torch::Tensor s, z;
    if (x.numel() > 0) {
      observe(x);
      std::tie(s, z) = functional::quantization_params(min_val, max_val, options_.quant_min(), options_.quant_max(),
                                                       options_.symmetric(), options_.eps());
    } else {
      std::tie(s, z) = calculate_qparams();
    }
    torch::NoGradGuard no_grad;
    assign(scale, s.to(scale.device()));
    assign(zero_point, z.to(zero_point.device()));
  }
  if (!fake_quant_enabled()) return x;
  std::optional<int64_t> axis;
  if (options_.per_channel()) axis = options_.ch_axis();
  return functional::fake_quantize(x, scale, zero_point, options_.quant_min(), options_.quant_max(), axis);
}

void FakeQuantizeImpl::to(torch::Device device, torch::Dtype, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
}
void FakeQuantizeImpl::to(torch::Dtype, bool) {}
void FakeQuantizeImpl::to(torch::Device device, bool non_blocking) { torch::nn::Module::to(device, non_blocking); }

void FakeQuantizeImpl::pretty_print(std::ostream& stream) const {
  stream << fmt::format("kd::qat::FakeQuantize(quant_min={}, quant_max={}, {}, {}, observer={}", options_.quant_min(),
                        options_.quant_max(), options_.symmetric() ? "symmetric" : "affine",
                        options_.per_channel() ? fmt::format("per_channel(axis={})", options_.ch_axis()) : "per_tensor",
                        kObserverNames.name(options_.observer()));
  if (options_.observer() == Observer::kMovingAverage) stream << fmt::format("({})", options_.averaging_constant());
  stream << fmt::format(", fake_quant={}, observer={})", fake_quant_enabled() ? "on" : "off",
                        observer_enabled() ? "on" : "off");
}

}  // namespace qat
}  // namespace kd
