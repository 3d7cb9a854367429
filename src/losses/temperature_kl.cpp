#include "kd/losses/temperature_kl.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {
namespace functional {

torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const TemperatureKLOptions& options) {
  ModelOutput s, t;
  s.logits = student_logits;
  t.logits = teacher_logits;
  check_logits_comparable(s, t);
  const double T = options.temperature();
  const auto log_ps = torch::log_softmax(student_logits / T, -1);
  const auto log_pt = torch::log_softmax(teacher_logits / T, -1);
  const auto kl = (log_pt.exp() * (log_pt - log_ps)).sum();
  return kl * (T * T) / student_logits.size(0);
}

}  // namespace functional

TemperatureKLImpl::TemperatureKLImpl(TemperatureKLOptions options_) : options(options_) { reset(); }

void TemperatureKLImpl::reset() {
  if (!(options.temperature() > 0.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("TemperatureKLOptions.temperature must be > 0, got {}", options.temperature()));
  }
}

LossResult TemperatureKLImpl::forward(const DistillBatch& batch) {
  LossResult r;
  r.total = functional::temperature_kl(batch.student.logits, batch.teacher.logits, options);
  r.parts["kl"] = r.total.detach();
  return r;
}

}  // namespace kd
