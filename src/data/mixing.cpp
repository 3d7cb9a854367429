#include "kd/data/mixing.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd::data {
namespace {

void check_options(const char* who, const MixOptions& o) {
  if (o.num_classes() <= 0 || !(o.alpha() > 0) || !(o.probability() >= 0 && o.probability() <= 1)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("{}: num_classes must be > 0 (got {}), alpha > 0 (got {}) and probability in [0, 1] (got {})",
                            who, o.num_classes(), o.alpha(), o.probability()));
  }
}

void check_targets(const char* who, const torch::Tensor& inputs, const torch::Tensor& targets) {
  if (!targets.defined() || targets.dim() != 1 || targets.size(0) != inputs.size(0) || targets.is_floating_point()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("{} mixes class labels: targets must be class indices [B] for inputs {}, got {}{}", who,
                            shape_string(inputs), shape_string(targets),
                            targets.defined() && targets.dim() == 2 ? " (language-model targets cannot be mixed)" : ""));
  }
}

// λ ~ Beta(α, α) from two Gamma(α) draws of torch's default generator; whether to mix this batch first.
bool draw(const MixOptions& o, double& lambda) {
  if (o.probability() < 1.0 && torch::rand({1}, torch::kDouble).item<double>() >= o.probability()) return false;
  const auto g = torch::_standard_gamma(torch::full({2}, o.alpha(), torch::kDouble));
  const double a = g[0].item<double>(), b = g[1].item<double>();
  lambda = a + b > 0 ? a / (a + b) : 0.5;
  return true;
}

}  // namespace

torch::Tensor mixed_targets(const torch::Tensor& targets, const torch::Tensor& partner, const torch::Tensor& own_share,
                            int64_t num_classes) {
  const auto t = targets.to(torch::kLong);
  if (t.numel() > 0 && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= num_classes)) {
    throw Error(ErrorCategory::kValue, fmt::format("mixing: targets range over [{}, {}], outside the {} classes",
                                                   t.min().item<int64_t>(), t.max().item<int64_t>(), num_classes));
  }
  const auto own = torch::one_hot(t, num_classes).to(torch::kFloat32);
  const auto w = own_share.to(torch::kFloat32).to(t.device()).unsqueeze(1);
  return w * own + (1 - w) * own.index_select(0, partner.to(t.device()));
}

CutMix::CutMix(MixOptions options) : options_(options) { check_options("CutMix", options_); }

double CutMix::mix(torch::Tensor& inputs, torch::Tensor& targets, const torch::Tensor& partner, int64_t y0, int64_t y1,
                   int64_t x0, int64_t x1) const {
  if (inputs.dim() != 4) {
    throw Error(ErrorCategory::kShape, fmt::format("CutMix needs images [B, C, H, W], got {}", shape_string(inputs)));
  }
  check_targets("CutMix", inputs, targets);
  const int64_t H = inputs.size(2), W = inputs.size(3);
  using torch::indexing::Slice;
  auto out = inputs.clone();
  const std::vector<torch::indexing::TensorIndex> box = {Slice(), Slice(), Slice(y0, y1), Slice(x0, x1)};
  out.index_put_(box, inputs.index_select(0, partner.to(inputs.device())).index(box));
  const double share = static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(H * W);
  targets = mixed_targets(targets, partner, torch::full({inputs.size(0)}, 1.0 - share), options_.num_classes());
  inputs = out;
  return share;
}

void CutMix::apply(torch::Tensor& inputs, torch::Tensor& targets) {
  double lambda = 1.0;
  if (!draw(options_, lambda)) return;
  const int64_t H = inputs.size(2), W = inputs.size(3);
  const double r = std::sqrt(1.0 - lambda);
  const auto h = static_cast<int64_t>(H * r), w = static_cast<int64_t>(W * r);
  const auto cy = torch::randint(H, {1}).item<int64_t>(), cx = torch::randint(W, {1}).item<int64_t>();
  const auto partner = torch::randperm(inputs.size(0), torch::kLong);
  mix(inputs, targets, partner, std::clamp<int64_t>(cy - h / 2, 0, H), std::clamp<int64_t>(cy + h - h / 2, 0, H),
      std::clamp<int64_t>(cx - w / 2, 0, W), std::clamp<int64_t>(cx + w - w / 2, 0, W));
}

TokenMix::TokenMix(MixOptions options) : options_(options) { check_options("TokenMix", options_); }

torch::Tensor TokenMix::mix(torch::Tensor& inputs, torch::Tensor& targets, torch::Tensor& mask,
                            const torch::Tensor& partner, int64_t start, int64_t length) const {
  if (inputs.dim() != 2 || inputs.is_floating_point()) {
    throw Error(ErrorCategory::kShape, fmt::format("TokenMix needs token ids [B, L], got {}", shape_string(inputs)));
  }
  check_targets("TokenMix", inputs, targets);
  const int64_t L = inputs.size(1);
  if (start < 0 || length < 0 || start + length > L) {
    throw Error(ErrorCategory::kValue, fmt::format("TokenMix: span [{}, {}) is outside [0, {})", start, start + length, L));
  }
  using torch::indexing::Slice;
  const auto p = partner.to(inputs.device());
  const std::vector<torch::indexing::TensorIndex> span = {Slice(), Slice(start, start + length)};
  auto real = mask.defined() ? mask.to(torch::kFloat32) : torch::ones(inputs.sizes(), torch::kFloat32);
  auto mixed_real = real.clone();
  mixed_real.index_put_(span, real.index_select(0, p).index(span));
  const auto from_partner = mixed_real.index(span).sum(1);
  const auto total = mixed_real.sum(1);
  const auto partner_share = torch::where(total > 0, from_partner / total.clamp_min(1), torch::zeros_like(total));
  auto out = inputs.clone();
  out.index_put_(span, inputs.index_select(0, p).index(span));
  inputs = out;
  if (mask.defined()) mask = mixed_real.to(mask.scalar_type());
  targets = mixed_targets(targets, partner, 1 - partner_share, options_.num_classes());
  return partner_share;
}

void TokenMix::apply(torch::Tensor& inputs, torch::Tensor& targets) {
  torch::Tensor no_mask;
  apply(inputs, targets, no_mask);
}

void TokenMix::apply(torch::Tensor& inputs, torch::Tensor& targets, torch::Tensor& mask) {
  double lambda = 1.0;
  if (!draw(options_, lambda)) return;
  const int64_t L = inputs.size(-1);
  const auto length = std::clamp<int64_t>(std::llround((1.0 - lambda) * static_cast<double>(L)), 0, L);
  const auto start = torch::randint(L - length + 1, {1}).item<int64_t>();
  mix(inputs, targets, mask, torch::randperm(inputs.size(0), torch::kLong), start, length);
}

}  // namespace kd::data
