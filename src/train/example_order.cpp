#include "example_order.h"

#include <algorithm>

#include "kd/core/error.h"
#include "kd/data/hard_example_sampler.h"

namespace kd::detail {

ExampleOrder::ExampleOrder(const StagedTrainerOptions& options, const data::TensorDataset& train, Student student,
                           std::optional<Teacher> teacher)
    : o_(options), train_(train), student_(std::move(student)), teacher_(std::move(teacher)) {
  if (o_.hard_example_mix() > 0 && o_.hardness() == Hardness::kDisagreement) {
    state_ = std::make_shared<torch::nn::Module>("HardExampleScores");
    state_->register_buffer("disagreement", torch::zeros({train_.size()}));
  }
}

std::vector<int64_t> ExampleOrder::epoch(int64_t stage_index, int64_t epoch, bool restored) {
  const uint64_t seed = o_.seed() * 1000003 + static_cast<uint64_t>(stage_index);
  if (o_.hard_example_mix() <= 0) return data::epoch_order(train_.size(), seed, epoch);
  data::HardExampleSampler sampler(train_.size(), data::HardExampleSamplerOptions().mix(o_.hard_example_mix()).seed(seed));
  if (o_.hardness() == Hardness::kTeacherEntropy) {
    if (!teacher_entropy_.defined()) teacher_entropy_ = data::predictive_entropy(all_logits(false));
    sampler.set_scores(teacher_entropy_);
  } else {
    auto kept = state_->named_buffers()["disagreement"];  // the checkpoint loads into this buffer
    if (!restored) {
      torch::NoGradGuard no_grad;
      kept.copy_(data::disagreement(all_logits(true), all_logits(false)).clamp_min(0));
    }
    sampler.set_scores(kept.detach().cpu().clone());
  }
  return sampler.epoch_order(epoch);
}

torch::Tensor ExampleOrder::all_logits(bool student) {
  const auto& cache = o_.teacher_cache();
  if (!student && cache) {
    auto out = cache->lookup(torch::arange(train_.size(), torch::kLong));
    if (!out.logits.defined()) {
      throw Error(ErrorCategory::kValue, "hard-example mining needs full teacher logits; the cache holds only top-k");
    }
    return out.logits;
  }
  torch::NoGradGuard no_grad;
  auto& model = student ? *student_->model() : *(*teacher_)->model();
  const bool was_training = model.is_training();
  model.eval();
  const auto params = model.parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < train_.size(); start += 512) {
    const auto end = std::min(train_.size(), start + 512);
    chunks.push_back(model.forward(train_.inputs.slice(0, start, end).to(device)).logits.cpu());
  }
  model.train(was_training);
  return torch::cat(chunks);
}

}  // namespace kd::detail
