#include "kd/losses/weighting/reward.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {

RewardWeightingImpl::RewardWeightingImpl(RewardWeightingOptions options_) : options(std::move(options_)) { reset(); }

void RewardWeightingImpl::reset() {
  const auto& o = options;
  auto bad = [](const std::string& what) { throw Error(ErrorCategory::kValue, "RewardWeightingOptions." + what); };
  if (o.num_losses() < 1) bad(fmt::format("num_losses must be >= 1, got {}", o.num_losses()));
  if (!(o.lr() > 0 && std::isfinite(o.lr()))) bad(fmt::format("lr must be > 0, got {}", o.lr()));
  if (!(o.noise_std() > 0 && std::isfinite(o.noise_std()))) {
    bad(fmt::format("noise_std must be > 0 (the policy must explore to learn), got {}", o.noise_std()));
  }
  if (!(o.baseline_momentum() >= 0 && o.baseline_momentum() < 1)) {
    bad(fmt::format("baseline_momentum must be in [0, 1), got {}", o.baseline_momentum()));
  }
  if (!(o.scale() >= 0 && std::isfinite(o.scale()))) {
    bad(fmt::format("scale must be > 0 (or 0 for K), got {}", o.scale()));
  }
  if (!o.init_logits().empty() && static_cast<int64_t>(o.init_logits().size()) != o.num_losses()) {
    bad(fmt::format("init_logits has {} values but num_losses is {}", o.init_logits().size(), o.num_losses()));
  }
  if (o.initial_baseline() && !std::isfinite(*o.initial_baseline())) {
    bad(fmt::format("initial_baseline must be finite, got {}", *o.initial_baseline()));
  }
  auto theta0 = o.init_logits().empty() ? torch::zeros({o.num_losses()}, torch::kFloat64)
                                        : torch::tensor(o.init_logits(), torch::kFloat64);
  theta = register_buffer("theta", theta0);
  baseline = register_buffer(
      "baseline", torch::scalar_tensor(o.initial_baseline() ? *o.initial_baseline()
                                                            : std::numeric_limits<double>::quiet_NaN(),
                                       torch::kFloat64));
  updates = register_buffer("updates", torch::zeros({}, torch::kInt64));
  noise = register_buffer("noise", torch::zeros({o.num_losses()}, torch::kFloat64));
  action_step = register_buffer("action_step", torch::full({}, -1, torch::kInt64));
}

bool RewardWeightingImpl::has_pending_action() const { return action_step.item<int64_t>() >= 0; }

torch::Tensor RewardWeightingImpl::pending_noise() const {
  return has_pending_action() ? noise.detach().clone() : torch::Tensor();
}

double RewardWeightingImpl::scale() const {
  return options.scale() > 0 ? options.scale() : static_cast<double>(options.num_losses());
}

torch::Tensor RewardWeightingImpl::mean_weights() const { return (torch::softmax(theta, 0) * scale()).detach(); }

double RewardWeightingImpl::baseline_value() const { return baseline.item<double>(); }

WeightingResult RewardWeightingImpl::combine(const std::vector<torch::Tensor>& losses,
                                             const std::vector<std::string>& names, const WeightingContext& context) {
  const auto& step = context.step;
  if (static_cast<int64_t>(losses.size()) != options.num_losses()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("RewardWeighting: got {} losses but was built for {}", losses.size(), options.num_losses()));
  }
  torch::Tensor w;
  {
    torch::NoGradGuard no_grad;
    if (is_training()) {
      const int64_t pending = action_step.item<int64_t>();
      if (pending < 0 || (!options.hold_action() && pending != step.global_step)) {
        noise.copy_(torch::randn({options.num_losses()}, theta.options()));
        action_step.fill_(std::max<int64_t>(step.global_step, 0));
      }
      w = torch::softmax(theta + options.noise_std() * noise, 0) * scale();
    } else {
      w = torch::softmax(theta, 0) * scale();
    }
  }
  WeightingResult r;
  for (size_t k = 0; k < losses.size(); ++k) {
    const auto& l = losses[k];
    auto term = l.reshape({}) * w[k].to(l.device(), l.scalar_type());
    r.total = r.total.defined() ? r.total + term : term;
  }
  r.weights = w;
  for (size_t k = 0; k < names.size() && k < losses.size(); ++k) r.parts["theta." + names[k]] = theta[k].detach();
  r.parts["baseline"] = baseline.detach().clone();
  return r;
}

double RewardWeightingImpl::update(double reward) {
  if (!std::isfinite(reward)) {
    throw Error(ErrorCategory::kValue, fmt::format("RewardWeighting::update: the reward is {}", reward));
  }
  if (!has_pending_action()) {
    throw Error(ErrorCategory::kState,
                "RewardWeighting::update: no pending action; call it once after each training step that used the "
                "weights (the sum's forward in training mode samples the action)");
  }
  torch::NoGradGuard no_grad;
  double b = baseline.item<double>();
  if (std::isnan(b)) b = reward;
  const double advantage = reward - b;
  // ∇_θ log N(z; θ, σ²I) = (z − θ)/σ² = ε/σ.
  theta.add_(noise, options.lr() * advantage / options.noise_std());
  const double beta = options.baseline_momentum();
  baseline.fill_(beta * b + (1.0 - beta) * reward);
  updates.add_(1);
  action_step.fill_(-1);
  return advantage;
}

}  // namespace kd
