#include "kd/train/adversarial.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "kd/losses/hard_label_ce.h"

namespace kd {
namespace {

// The student's cross-entropy on `targets`, masked positions (a mask of the targets' shape) ignored.
torch::Tensor task_loss(const ModelOutput& out, const torch::Tensor& targets, const torch::Tensor& mask) {
  auto t = targets;
  if (mask.defined() && !t.is_floating_point() && mask.sizes() == t.sizes()) t = t.masked_fill(mask == 0, -100);
  return functional::hard_label_ce(out.logits, t);
}

torch::Tensor fgsm_images(Model& student, const torch::Tensor& x, const torch::Tensor& targets,
                          const torch::Tensor& mask, const AdversarialOptions& o) {
  auto leaf = x.detach().clone().requires_grad_(true);
  const auto loss = task_loss(student.forward(leaf), targets, mask);
  const auto g = torch::autograd::grad({loss}, {leaf})[0];
  auto adv = (x + o.epsilon() * g.sign()).detach();
  if (o.input_min() || o.input_max()) {
    adv = adv.clamp(o.input_min() ? c10::optional<c10::Scalar>(*o.input_min()) : c10::nullopt,
                    o.input_max() ? c10::optional<c10::Scalar>(*o.input_max()) : c10::nullopt);
  }
  return adv;
}

torch::Tensor hotflip_tokens(Model& student, const torch::Tensor& tokens, const torch::Tensor& targets,
                             const torch::Tensor& mask, const AdversarialOptions& o) {
  const auto out = student.forward(tokens);
  const auto it = out.extras.find("embeddings");
  const auto params = student.named_parameters();  // find() points into this dictionary
  const auto* embed = params.find("embed.weight");
  if (it == out.extras.end() || !it->second.requires_grad() || !embed) {
    throw Error(ErrorCategory::kModel,
                fmt::format("adversarial examples for token ids need the model's input embeddings: extras[\"embeddings\"] "
                            "(differentiable) and a parameter \"embed.weight\" ({} {} here)",
                            it == out.extras.end() ? "no extras[\"embeddings\"]" : "extras[\"embeddings\"]",
                            embed ? "and embed.weight" : "but no embed.weight"));
  }
  const auto& e = it->second;  // [B, L, D]
  const auto g = torch::autograd::grad({task_loss(out, targets, mask)}, {e})[0].detach();
  const auto E = embed->detach();                                   // [V, D]
  // gain[b, t, v] = (E_v − E_{x_t})·g_t
  auto gain = torch::matmul(g, E.t()) - (g * e.detach()).sum(-1, /*keepdim=*/true);  // [B, L, V]
  const double ninf = -std::numeric_limits<double>::infinity();
  gain.scatter_(2, tokens.unsqueeze(-1), ninf);                       // writing the same token gains nothing
  if (o.pad_token() >= 0 && o.pad_token() < gain.size(2)) gain.select(2, o.pad_token()).fill_(ninf);
  auto real = tokens.ne(o.pad_token());
  if (mask.defined() && mask.sizes() == tokens.sizes()) real = real.logical_and(mask.to(tokens.device()) != 0);
  auto [best, best_token] = gain.max(-1);                             // [B, L]
  best = best.masked_fill(real.logical_not(), ninf);
  auto flipped = tokens.clone();
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    const int64_t n_real = real[b].sum().item<int64_t>();
    const auto k = std::min<int64_t>(n_real, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(o.epsilon() * n_real))));
    if (k == 0) continue;
    const auto positions = std::get<1>(best[b].topk(k));
    flipped[b].index_put_({positions}, best_token[b].index_select(0, positions));
  }
  return flipped;
}

}  // namespace

torch::Tensor adversarial_inputs(Model& student, const torch::Tensor& inputs, const torch::Tensor& targets,
                                 const torch::Tensor& mask, const AdversarialOptions& options) {
  if (!(options.epsilon() >= 0) || !(options.ratio() >= 0 && options.ratio() <= 1)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("adversarial examples: epsilon must be >= 0 (got {}) and ratio in [0, 1] (got {})",
                            options.epsilon(), options.ratio()));
  }
  if (options.input_min() && options.input_max() && !(*options.input_min() <= *options.input_max())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("adversarial examples: input_min {} must not exceed input_max {}", *options.input_min(),
                            *options.input_max()));
  }
  const int64_t n = inputs.size(0);
  const auto m = static_cast<int64_t>(std::ceil(options.ratio() * static_cast<double>(n)));
  if (options.epsilon() == 0 || m == 0) return inputs;
  const bool was_training = student.is_training();
  student.eval();
  torch::AutoGradMode grad_on(true);
  torch::Tensor adv;
  try {
    const auto sub_mask = mask.defined() ? mask.slice(0, 0, m) : mask;
    adv = inputs.is_floating_point()
              ? fgsm_images(student, inputs.slice(0, 0, m), targets.slice(0, 0, m), sub_mask, options)
              : hotflip_tokens(student, inputs.slice(0, 0, m), targets.slice(0, 0, m), sub_mask, options);
  } catch (...) {
    student.train(was_training);
    throw;
  }
  student.train(was_training);
  return m == n ? adv : torch::cat({adv, inputs.slice(0, m, n)});
}

ClassificationMetrics evaluate_under_fgsm(Model& model, const data::TensorDataset& dataset, int64_t num_classes,
                                          const AdversarialOptions& options, int64_t batch_size) {
  if (!dataset.inputs.defined() || !dataset.inputs.is_floating_point()) {
    throw Error(ErrorCategory::kValue, "evaluate_under_fgsm: FGSM needs floating-point inputs (images), not token ids");
  }
  ClassificationMetrics metrics(num_classes);
  const auto params = model.parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  const auto o = AdversarialOptions(options).ratio(1.0);
  const bool was_training = model.is_training();
  for (int64_t start = 0; start < dataset.size(); start += batch_size) {
    const auto end = std::min(dataset.size(), start + batch_size);
    const auto targets = dataset.targets.slice(0, start, end).to(device);
    const auto adv = adversarial_inputs(model, dataset.inputs.slice(0, start, end).to(device), targets, {}, o);
    torch::NoGradGuard no_grad;
    model.eval();
    metrics.update(model.forward(adv).logits.cpu(), targets.cpu());
    model.train(was_training);
  }
  return metrics;
}

}  // namespace kd
