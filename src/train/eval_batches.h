#pragma once
// Private to src/train: runs a model over a dataset in evaluation batches (metrics, calibration).

#include <algorithm>
#include <cstdint>

#include <torch/torch.h>

#include "kd/core/model.h"
#include "kd/data/tensor_dataset.h"

namespace kd::detail {

// Runs `fn(start, end, logits)` over the dataset in batches, in eval mode without autograd, on the
// model's device; the model's train/eval mode is restored afterwards, also when fn throws.
template <class Fn>
void for_each_batch(Model& model, const data::TensorDataset& dataset, int64_t batch_size, Fn fn) {
  struct RestoreMode {
    Model& model;
    bool training;
    ~RestoreMode() { model.train(training); }
  } restore{model, model.is_training()};
  torch::NoGradGuard no_grad;
  model.eval();
  const auto params = model.parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  for (int64_t start = 0; start < dataset.size(); start += batch_size) {
    const auto end = std::min(dataset.size(), start + batch_size);
    fn(start, end, model.forward(dataset.inputs.slice(0, start, end).to(device)).logits);
  }
}

}  // namespace kd::detail
