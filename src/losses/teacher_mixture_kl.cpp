#include "kd/losses/teacher_mixture_kl.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "kd/losses/registry.h"

namespace kd {

TeacherMixtureKLImpl::TeacherMixtureKLImpl(TeacherMixtureKLOptions options) : options(std::move(options)) { reset(); }

void TeacherMixtureKLImpl::reset() {
  const auto& o = options;
  if (o.teachers() < 1 || !(o.temperature() > 0) || !(o.label_weight() >= 0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("TeacherMixtureKLOptions: teachers must be >= 1 (got {}), temperature > 0 (got {}), "
                            "label_weight >= 0 (got {})",
                            o.teachers(), o.temperature(), o.label_weight()));
  }
  auto init = torch::zeros({o.teachers()}, torch::kFloat64);
  if (!o.initial_weights().empty()) {
    if (static_cast<int64_t>(o.initial_weights().size()) != o.teachers()) {
      throw Error(ErrorCategory::kValue, fmt::format("TeacherMixtureKLOptions: {} initial weights for {} teachers",
                                                     o.initial_weights().size(), o.teachers()));
    }
    for (int64_t k = 0; k < o.teachers(); ++k) {
      const double w = o.initial_weights()[static_cast<size_t>(k)];
      if (!(w > 0)) throw Error(ErrorCategory::kValue, fmt::format("TeacherMixtureKLOptions: initial weight {} must be > 0", w));
      init[k] = std::log(w);  // softmax(log w) = w / Σ w
    }
  }
  theta = register_parameter("theta", init.to(torch::kFloat32));
}

torch::Tensor TeacherMixtureKLImpl::weights() const { return torch::softmax(theta.detach(), 0); }

LossResult TeacherMixtureKLImpl::forward(const DistillBatch& batch) {
  const auto& zs = batch.student.logits;
  if (!zs.defined() || zs.dim() != 2) {
    throw Error(ErrorCategory::kShape, fmt::format("TeacherMixtureKL needs student logits [B, C], got {}", shape_string(zs)));
  }
  if (!batch.targets.defined() || batch.targets.dim() != 1 || batch.targets.size(0) != zs.size(0)) {
    throw Error(ErrorCategory::kValue, fmt::format("TeacherMixtureKL needs class targets [B] for the {} student rows, got {}",
                                                   zs.size(0), shape_string(batch.targets)));
  }
  const double T = options.temperature();
  const auto w = torch::softmax(theta, 0).to(zs.dtype());
  torch::Tensor mix_t, mix_1;
  for (int64_t k = 0; k < options.teachers(); ++k) {
    const auto key = fmt::format("teacher{}.logits", k);
    const auto it = batch.teacher.extras.find(key);
    if (it == batch.teacher.extras.end()) {
      throw Error(ErrorCategory::kModel,
                  fmt::format("TeacherMixtureKL: batch.teacher.extras has no '{}' (teachers() = {}); use kd::MultiTeacher, "
                              "which keeps each teacher's logits there (kd-train: list the other teachers' files in "
                              "teacher.ensemble)",
                              key, options.teachers()));
    }
    const auto zk = it->second.detach().to(zs.dtype());
    if (zk.sizes() != zs.sizes()) {
      throw Error(ErrorCategory::kShape, fmt::format("TeacherMixtureKL: '{}' is {} but the student's logits are {}", key,
                                                     shape_string(zk), shape_string(zs)));
    }
    const auto pt = w[k] * torch::softmax(zk / T, -1);
    const auto p1 = w[k] * torch::softmax(zk, -1);
    mix_t = mix_t.defined() ? mix_t + pt : pt;
    mix_1 = mix_1.defined() ? mix_1 + p1 : p1;
  }
  const int64_t B = zs.size(0), C = zs.size(1);
  if (batch.targets.min().item<int64_t>() < 0 || batch.targets.max().item<int64_t>() >= C) {
    throw Error(ErrorCategory::kValue, fmt::format("TeacherMixtureKL: targets must lie in [0, {})", C));
  }
  const auto target = mix_t.detach();
  const auto log_ps = torch::log_softmax(zs / T, -1);
  // Σ p log p with 0·log 0 = 0.
  const auto plogp = torch::where(target > 0, target * torch::log(target.clamp_min(1e-30)), torch::zeros_like(target));
  const auto kl = (plogp - target * log_ps).sum() / double(B) * (T * T);
  const auto ce = -torch::log(mix_1.gather(1, batch.targets.view({B, 1})).clamp_min(1e-30)).mean();
  LossResult r;
  r.total = kl + options.label_weight() * ce;
  r.parts["kl"] = kl.detach();
  r.parts["mixture_ce"] = ce.detach();
  const auto wd = weights();
  for (int64_t k = 0; k < options.teachers(); ++k) r.parts[fmt::format("w.teacher{}", k)] = wd[k];
  return r;
}

KD_REGISTER_LOSS(
    "teacher_mixture_kl",
    [](const LossSpec& s) {
      return TeacherMixtureKL(TeacherMixtureKLOptions(s.integer("teachers", 2))
                                  .temperature(s.number("temperature", 1.0))
                                  .label_weight(s.number("label_weight", 1.0))
                                  .initial_weights(s.numbers("initial_weights", {})));
    },
    {"teachers", "temperature", "label_weight", "initial_weights"},
    "KL to a mixture of kd::MultiTeacher's teachers whose weights are learned from the labels",
    LossNeeds().each_teacher(true));

}  // namespace kd
