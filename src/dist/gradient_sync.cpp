#include "kd/dist/gradient_sync.h"

#include <torch/torch.h>

namespace kd::dist {

void all_reduce_gradients(ProcessGroup& group, const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  if (group.world_size() == 1 || params.empty()) return;
  auto defined = torch::zeros({static_cast<int64_t>(params.size())}, torch::kInt32);
  auto* flag = defined.data_ptr<int32_t>();
  for (size_t i = 0; i < params.size(); ++i) flag[i] = params[i].grad().defined() ? 1 : 0;
  std::vector<torch::Tensor> flags = {defined};
  group.all_reduce_max(flags);

  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  const auto flush = [&] {
    group.all_reduce_sum(bucket);
    bucket.clear();
    bytes = 0;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    if (!flag[i]) continue;
    auto p = params[i];
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    bucket.push_back(p.grad());
    bytes += p.grad().numel() * static_cast<int64_t>(p.grad().element_size());
    if (bytes >= bucket_bytes) flush();
  }
  if (!bucket.empty()) flush();
}

void broadcast_from_main(ProcessGroup& group, std::vector<torch::Tensor> tensors) {
  std::vector<torch::Tensor> defined;
  for (auto& t : tensors) if (t.defined() && t.numel() > 0) defined.push_back(t);
  group.broadcast(defined, 0);
}

}  // namespace kd::dist
