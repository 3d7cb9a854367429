#include "kd/data/augmentation.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::data {

RandomShiftFlip::RandomShiftFlip(RandomShiftFlipOptions options) : options_(options) {
  if (options_.max_shift() < 0 || !(options_.flip_probability() >= 0 && options_.flip_probability() <= 1)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("RandomShiftFlipOptions: max_shift must be >= 0 (got {}) and flip_probability in [0, 1] "
                            "(got {})",
                            options_.max_shift(), options_.flip_probability()));
  }
}

torch::Tensor RandomShiftFlip::transform(const torch::Tensor& inputs, const torch::Tensor& dy, const torch::Tensor& dx,
                                         const torch::Tensor& flip) const {
  if (inputs.dim() != 4) {
    throw Error(ErrorCategory::kShape,
                fmt::format("RandomShiftFlip needs images [B, C, H, W], got {}", shape_string(inputs)));
  }
  const int64_t B = inputs.size(0), H = inputs.size(2), W = inputs.size(3);
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(inputs.device());
  // Mirror first, then shift: the source of (y, x) is (y − dy, x − dx) in the (mirrored) image.
  auto ys = torch::arange(H, opts).unsqueeze(0) - dy.to(inputs.device()).view({B, 1});                  // [B, H]
  auto xs = torch::arange(W, opts).unsqueeze(0) - dx.to(inputs.device()).view({B, 1});                  // [B, W]
  xs = torch::where(flip.to(inputs.device()).view({B, 1}), (W - 1) - xs, xs);
  const auto valid = (ys >= 0 & ys < H).unsqueeze(2) & (xs >= 0 & xs < W).unsqueeze(1);           // [B, H, W]
  const auto flat = ys.clamp(0, H - 1).unsqueeze(2) * W + xs.clamp(0, W - 1).unsqueeze(1);       // [B, H, W]
  auto src = inputs.flatten(2);                                                                   // [B, C, H·W]
  auto idx = flat.flatten(1).unsqueeze(1).expand({B, inputs.size(1), H * W});
  auto out = src.gather(2, idx).view(inputs.sizes());
  return out.masked_fill(~valid.unsqueeze(1), options_.fill());
}

void RandomShiftFlip::apply(torch::Tensor& inputs, torch::Tensor& targets) {
  const int64_t B = inputs.size(0), s = options_.max_shift();
  auto dy = torch::randint(-s, s + 1, {B}, torch::kLong);
  auto dx = torch::randint(-s, s + 1, {B}, torch::kLong);
  auto flip = torch::rand({B}, torch::kDouble) < options_.flip_probability();
  inputs = transform(inputs, dy, dx, flip);
}

}  // namespace kd::data
