#include "kd/dist/gradient_sync.h"

#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::dist {

GradientSync::GradientSync(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> params,
                           const GradientSyncOptions& options)
    : group_(std::move(group)), params_(std::move(params)) {
  if (!group_) throw Error(ErrorCategory::kValue, "GradientSync needs a process group");
  const size_t n = params_.size();
  bucket_of_.assign(n, 0);
  local_.resize(n);
  produced_.assign(n, 0);
  // Reverse order: backward produces the last layers' gradients first.
  int64_t bytes = 0;
  for (size_t k = n; k-- > 0;) {
    const int64_t cap = buckets_.size() <= 1 ? options.first_bucket_bytes() : options.bucket_bytes();
    if (buckets_.empty() || bytes >= cap) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(k);
    bucket_of_[k] = buckets_.size() - 1;
    bytes += params_[k].numel() * static_cast<int64_t>(params_[k].element_size());
  }
  for (size_t i = 0; i < n; ++i) {
    if (!params_[i].requires_grad()) continue;  // it never gets a gradient: finish() sends zeros or nothing
    // The hook sees the gradient before it is accumulated into .grad (a leaf's pre-hook).
    hooks_.emplace_back(i, params_[i].register_hook([this, i](const torch::Tensor& grad) { on_gradient(i, grad); }));
  }
}

GradientSync::~GradientSync() {
  for (const auto& [i, handle] : hooks_) params_[i].remove_hook(handle);
}

void GradientSync::arm() {
  for (auto& b : buckets_) {
    b.waiting = b.params.size();
    b.pending.reset();
  }
  std::fill(produced_.begin(), produced_.end(), 0);
  next_bucket_ = 0;
  sent_during_backward_ = 0;
  armed_ = true;
}

void GradientSync::on_gradient(size_t i, const torch::Tensor& grad) {
  if (!armed_ || produced_[i]) return;
  torch::NoGradGuard no_grad;
  const auto& before = params_[i].grad();
  local_[i] = before.defined() ? before.detach() + grad.detach() : grad.detach().clone();
  produced_[i] = 1;
  if (--buckets_[bucket_of_[i]].waiting == 0) send_ready_buckets();
}

void GradientSync::send_ready_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].waiting == 0) {
    send(buckets_[next_bucket_++]);
    ++sent_during_backward_;
  }
}

void GradientSync::send(Bucket& bucket) {
  std::vector<torch::Tensor> tensors;
  for (size_t i : bucket.params) tensors.push_back(local_[i]);
  bucket.pending = group_->all_reduce_sum_async(std::move(tensors));
}

void GradientSync::finish(std::vector<torch::Tensor>& extra) {
  if (!armed_) throw Error(ErrorCategory::kState, "GradientSync::finish() without arm() before the backward");
  armed_ = false;
  torch::NoGradGuard no_grad;
  // Parameters backward gave no gradient on this rank: what .grad holds (earlier micro-batches), else zeros.
  auto has_gradient = torch::zeros({static_cast<int64_t>(params_.size())}, torch::kFloat32);
  auto flag = has_gradient.accessor<float, 1>();
  for (size_t i = 0; i < params_.size(); ++i) {
    flag[static_cast<int64_t>(i)] = produced_[i] || params_[i].grad().defined() ? 1.0f : 0.0f;
    if (!produced_[i]) {
      local_[i] = params_[i].grad().defined() ? params_[i].grad().detach().clone() : torch::zeros_like(params_[i]);
    }
  }
  for (; next_bucket_ < buckets_.size(); ++next_bucket_) send(buckets_[next_bucket_]);
  // The last exchange, after every bucket: which gradients exist anywhere, and the caller's sums.
  std::vector<torch::Tensor> tail = {has_gradient};
  for (auto& t : extra) tail.push_back(t);
  group_->all_reduce_sum(tail);
  for (size_t k = 0; k < extra.size(); ++k) extra[k] = tail[k + 1];
  for (auto& b : buckets_) b.pending->wait();
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].mutable_grad() = flag[static_cast<int64_t>(i)] > 0 ? local_[i] : torch::Tensor();
    local_[i] = torch::Tensor();
  }
}

void broadcast_from_main(ProcessGroup& group, std::vector<torch::Tensor> tensors) {
  std::vector<torch::Tensor> defined;
  for (auto& t : tensors) if (t.defined() && t.numel() > 0) defined.push_back(t);
  group.broadcast(defined, 0);
}

}  // namespace kd::dist
