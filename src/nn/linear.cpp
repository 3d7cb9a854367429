#include "kd/nn/linear.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::nn {

torch::Tensor LinearImpl::forward(const torch::Tensor& input) {
  ++forward_calls_;
  auto y = torch::nn::LinearImpl::forward(input);
  if (adapter_ && adapter_->active()) y = y + adapter_->forward(input, is_training());
  return y;
}

void LinearImpl::attach(std::shared_ptr<LinearAdapter> adapter) {
  if (!adapter) throw Error(ErrorCategory::kValue, "kd::nn::Linear::attach: the adapter is null");
  if (adapter_) {
    throw Error(ErrorCategory::kState,
                fmt::format("kd::nn::Linear [{}, {}] already has a '{}' adapter attached; detach() it first (e.g. "
                            "kd::lora::apply was called twice on the same layer)",
                            options.out_features(), options.in_features(), adapter_->kind()));
  }
  adapter_ = std::move(adapter);
}

void LinearImpl::detach() { adapter_.reset(); }

std::shared_ptr<torch::nn::Module> LinearImpl::clone(const torch::optional<torch::Device>& device) const {
  // torch::nn::LinearImpl's Cloneable::clone would copy-construct a torch::nn::LinearImpl (slicing
  // off this type and its forward); make our own type and copy the parameters as Cloneable does.
  torch::NoGradGuard no_grad;
  auto copy = std::make_shared<LinearImpl>(options);
  auto mine = named_parameters(/*recurse=*/false);
  auto theirs = copy->named_parameters(/*recurse=*/false);
  for (const auto& p : mine) {
    const auto& t = p.value();
    theirs[p.key()].set_data(device && t.device() != *device ? t.to(*device) : t.clone());
  }
  copy->train(is_training());
  return copy;
}

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << "kd::nn::Linear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
         << ", bias=" << std::boolalpha << options.bias();
  if (adapter_) stream << ", adapter=" << adapter_->kind();
  stream << ")";
}

}  // namespace kd::nn
