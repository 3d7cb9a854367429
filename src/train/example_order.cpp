#include "example_order.h"

#include <algorithm>
#include <optional>

#include <spdlog/spdlog.h>

#include "kd/core/error.h"
#include "kd/core/eval_mode.h"
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
  torch::Tensor hardness;
  if (o_.hardness() == Hardness::kTeacherEntropy) {
    if (!teacher_entropy_.defined()) teacher_entropy_ = scores(/*disagreement=*/false);
    hardness = teacher_entropy_;
  } else {
    auto kept = state_->named_buffers()["disagreement"];  // the checkpoint loads into this buffer
    if (!restored) {
      torch::NoGradGuard no_grad;
      kept.copy_(scores(/*disagreement=*/true).clamp_min(0));
    }
    hardness = kept.detach().cpu().clone();
  }
  sampler.set_scores(hardness);
  spdlog::info("hard examples: {:.0f} % of stage {} epoch {} drawn by {} (per example: mean {:.4g}, max {:.4g})",
               100 * o_.hard_example_mix(), stage_index + 1, epoch + 1,
               o_.hardness() == Hardness::kTeacherEntropy ? "the teacher's entropy" : "student-teacher KL",
               hardness.mean().item<double>(), hardness.max().item<double>());
  return sampler.epoch_order(epoch);
}

torch::Tensor ExampleOrder::scores(bool disagreement) {
  torch::NoGradGuard no_grad;
  const auto& cache = o_.teacher_cache();
  auto& student = *student_->model();
  // Only the models that are run are switched to eval mode.
  std::optional<EvalModeGuard> student_eval, teacher_eval;
  if (disagreement) student_eval.emplace(student);
  if (!cache) teacher_eval.emplace(*(*teacher_)->model());
  auto logits = [](Model& model, const torch::Tensor& x) {
    const auto params = model.parameters();
    const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
    return model.forward(x.to(device)).logits.cpu();
  };
  // Token tasks: a sequence's score is the mean over its scored tokens.
  const auto& y = train_.targets;
  const torch::Tensor mask = train_.mask.defined()                     ? train_.mask
                             : y.defined() && y.dim() == 2 && !y.is_floating_point() ? y != o_.ignore_index()
                                                                                     : torch::Tensor();
  std::vector<torch::Tensor> chunks;
  // In chunks: a token task's logits over the whole set ([N, L, V]) need not fit in memory.
  for (int64_t start = 0; start < train_.size(); start += 512) {
    const auto end = std::min(train_.size(), start + 512);
    const auto x = train_.inputs.slice(0, start, end);
    torch::Tensor t;
    if (cache) {
      t = cache->lookup(torch::arange(start, end, torch::kLong)).logits;
      if (!t.defined()) {
        throw Error(ErrorCategory::kValue, "hard-example mining needs full teacher logits; the cache holds only top-k");
      }
      t = t.cpu();
    } else {
      t = logits(*(*teacher_)->model(), x);
    }
    const auto m = mask.defined() ? mask.slice(0, start, end) : torch::Tensor();
    chunks.push_back(disagreement ? data::disagreement(logits(student, x), t, 1.0, m)
                                  : data::predictive_entropy(t, 1.0, m));
  }
  return torch::cat(chunks);
}

}  // namespace kd::detail
