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

TokenNetImpl::TokenNetImpl(int64_t vocab, int64_t width) {
  embed = register_module("embed", torch::nn::Embedding(vocab, width));
  out = register_module("out", kd::nn::Linear(width, vocab));
}

kd::ModelOutput TokenNetImpl::forward(const torch::Tensor& ids) {
  kd::ModelOutput o;
  o.hidden_states.push_back(torch::tanh(embed->forward(ids)));
  o.logits = out->forward(o.hidden_states.back());
  return o;
}

kd::data::TensorDataset padded_tokens(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  auto ids = torch::randint(vocab, {n, len}, torch::kInt64);
  auto mask = torch::zeros({n, len}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) mask[i].slice(0, 0, 1 + (i * 7) % len).fill_(1);
  ids.masked_fill_(mask == 0, 0);
  auto targets = torch::full({n, len}, -100, torch::kInt64);
  targets.slice(1, 0, len - 1).copy_(ids.slice(1, 1, len));
  targets.masked_fill_(mask == 0, -100);
  targets.slice(1, 0, len - 1).masked_fill_(mask.slice(1, 1, len) == 0, -100);  // the last real position
  return {ids, targets, mask};
}

kd::data::TensorDataset synthetic(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  auto x = torch::randn({n, 8});
  auto w = torch::randn({8, 4});
  return {x, torch::matmul(x, w).argmax(1)};
}

}  // namespace kd::testing
