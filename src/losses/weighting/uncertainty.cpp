#include "kd/losses/weighting/uncertainty.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd {
namespace functional {

torch::Tensor uncertainty_weighted(const torch::Tensor& losses, const torch::Tensor& log_vars) {
  if (losses.dim() != 1 || log_vars.sizes() != losses.sizes()) {
    throw Error(ErrorCategory::kShape,
                fmt::format("uncertainty_weighted: losses {} and log_vars {} must both be [K]", shape_string(losses),
                            shape_string(log_vars)));
  }
  return (torch::exp(-log_vars) * losses + log_vars).sum();
}

}  // namespace functional

UncertaintyWeightingImpl::UncertaintyWeightingImpl(UncertaintyWeightingOptions options_) : options(options_) {
  reset();
}

void UncertaintyWeightingImpl::reset() {
  if (options.num_losses() < 1) {
    throw Error(ErrorCategory::kValue,
                fmt::format("UncertaintyWeightingOptions.num_losses must be >= 1, got {}", options.num_losses()));
  }
  if (!std::isfinite(options.init_log_var())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("UncertaintyWeightingOptions.init_log_var must be finite, got {}", options.init_log_var()));
  }
  log_vars = register_parameter("log_vars", torch::full({options.num_losses()}, options.init_log_var()));
}

WeightingResult UncertaintyWeightingImpl::combine(const std::vector<torch::Tensor>& losses,
                                                  const std::vector<std::string>& names, const WeightingContext& context) {
  if (static_cast<int64_t>(losses.size()) != options.num_losses()) {
    throw Error(ErrorCategory::kShape, fmt::format("UncertaintyWeighting: got {} losses but was built for {}",
                                                   losses.size(), options.num_losses()));
  }
  std::vector<torch::Tensor> flat;
  for (const auto& l : losses) flat.push_back(l.reshape({}).to(log_vars.scalar_type()));
  WeightingResult r;
  r.total = functional::uncertainty_weighted(torch::stack(flat), log_vars);
  r.weights = torch::exp(-log_vars).detach();
  for (size_t k = 0; k < names.size() && k < losses.size(); ++k) {
    r.parts["log_var." + names[k]] = log_vars[k].detach();
  }
  return r;
}

}  // namespace kd
