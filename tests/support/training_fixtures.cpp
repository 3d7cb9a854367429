#include "training_fixtures.h"

namespace kd::testing {

MlpImpl::MlpImpl(int64_t hidden) {
  fc1 = register_module("fc1", kd::nn::Linear(8, hidden));
  fc2 = register_module("fc2", kd::nn::Linear(hidden, 4));
}

kd::ModelOutput MlpImpl::forward(const torch::Tensor& x) {
  kd::ModelOutput out;
  out.hidden_states.push_back(torch::tanh(fc1->forward(x)));
  out.logits = fc2->forward(out.hidden_states.back());
  return out;
}

kd::data::TensorDataset synthetic(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  auto x = torch::randn({n, 8});
  auto w = torch::randn({8, 4});
  return {x, torch::matmul(x, w).argmax(1)};
}

}  // namespace kd::testing
