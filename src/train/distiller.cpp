#include "kd/train/distiller.h"

#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {

Distiller::Distiller(Student student, std::optional<Teacher> teacher, torch::nn::AnyModule loss,
                     DistillerOptions options)
    : student_(std::move(student)), teacher_(std::move(teacher)), loss_(std::move(loss)),
      options_(options) {
  if (loss_.is_empty()) throw Error(ErrorCategory::kValue, "Distiller needs a loss module, got an empty one");
  if (options_.batch_size() <= 0 || options_.epochs() < 0 || !(options_.lr() > 0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("Distiller options out of range: batch_size {} (> 0), epochs {} (>= 0), lr {} (> 0)",
                            options_.batch_size(), options_.epochs(), options_.lr()));
  }
}

std::vector<EpochSummary> Distiller::fit(const data::TensorDataset& train,
                                         const data::TensorDataset* validation) {
  if (train.size() == 0) throw Error(ErrorCategory::kValue, "Distiller::fit: the training set is empty");
  std::vector<torch::Tensor> params;
  for (auto& p : student_->parameters()) if (p.requires_grad()) params.push_back(p);
  for (auto& p : loss_.ptr()->parameters()) if (p.requires_grad()) params.push_back(p);
  torch::optim::AdamW optimizer(
      params, torch::optim::AdamWOptions(options_.lr()).weight_decay(options_.weight_decay()));

  // Data moves to wherever the student lives; the datasets stay on the CPU.
  const torch::Device device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  const int64_t n = train.size();
  const int64_t bs = options_.batch_size();
  const int64_t steps_per_epoch = (n + bs - 1) / bs;
  StepInfo info;
  info.stage_steps = steps_per_epoch * options_.epochs();
  std::vector<EpochSummary> history;

  for (int64_t epoch = 0; epoch < options_.epochs(); ++epoch) {
    student_->train();
    const auto order = torch::tensor(data::epoch_order(n, options_.seed(), epoch), torch::kInt64);
    EpochSummary summary;
    summary.epoch = epoch;
    const auto start = std::chrono::steady_clock::now();
    for (int64_t b = 0; b < steps_per_epoch; ++b) {
      const auto idx = order.slice(0, b * bs, std::min(n, (b + 1) * bs));
      DistillBatch batch;
      batch.inputs = train.inputs.index_select(0, idx).to(device);
      batch.targets = train.targets.index_select(0, idx).to(device);
      info.epoch = epoch;
      info.progress = info.stage_steps > 0 ? double(info.stage_step) / double(info.stage_steps) : 0.0;
      batch.step = info;
      if (teacher_) batch.teacher = (*teacher_)->forward(batch.inputs);
      batch.student = student_->forward(batch.inputs);
      const LossResult result = loss_.forward<LossResult>(batch);
      optimizer.zero_grad();
      result.total.backward();
      optimizer.step();

      ++info.global_step;
      ++info.stage_step;
      ++summary.steps;
      summary.mean_loss += result.total.item<double>();
      for (const auto& [name, value] : result.parts) summary.mean_parts[name] += value.item<double>();
      if (on_step) on_step(info, result);
      if (options_.log_every() > 0 && (b + 1) % options_.log_every() == 0) {
        spdlog::info("epoch {} step {}/{}  loss {:.4f}", epoch + 1, b + 1, steps_per_epoch,
                     result.total.item<double>());
      }
    }
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    summary.samples_per_s = n / std::max(summary.seconds, 1e-9);
    summary.mean_loss /= summary.steps;
    for (auto& [name, value] : summary.mean_parts) value /= summary.steps;
    if (validation && validation->size() > 0) {
      summary.val_accuracy = classification_accuracy(*student_->model(), *validation);
    }
    spdlog::info("epoch {}/{} done in {:.1f} s ({:.0f} samples/s): mean loss {:.4f}{}", epoch + 1,
                 options_.epochs(), summary.seconds, summary.samples_per_s, summary.mean_loss,
                 summary.val_accuracy >= 0 ? fmt::format(", validation accuracy {:.2f}%", 100 * summary.val_accuracy)
                                           : std::string());
    history.push_back(summary);
  }
  return history;
}

double classification_accuracy(Model& model, const data::TensorDataset& dataset, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  int64_t correct = 0;
  const int64_t n = dataset.size();
  for (int64_t start = 0; start < n; start += batch_size) {
    const auto end = std::min(n, start + batch_size);
    const auto device = model.parameters().empty() ? torch::Device(torch::kCPU)
                                                   : model.parameters().front().device();
    const auto logits = model.forward(dataset.inputs.slice(0, start, end).to(device)).logits;
    correct += logits.argmax(-1).eq(dataset.targets.slice(0, start, end).to(logits.device())).sum().item<int64_t>();
  }
  model.train(was_training);
  return n > 0 ? double(correct) / double(n) : 0.0;
}

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

}  // namespace kd
