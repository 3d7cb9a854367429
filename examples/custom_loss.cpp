// A user-defined loss, registered in one line and combined with a built-in by name.
//
// Defines "confidence_kl" — soft-target KL where each example counts in proportion to the
// teacher's confidence — registers it with KD_REGISTER_LOSS, builds
//   L = 0.7·confidence_kl(T=2) + 0.3·hard_label_ce
// from specs (the same data a kd-train config would hold), and trains a tiny student against a
// tiny fixed teacher on synthetic data, printing the loss and its parts. Exits 1 if the loss did
// not fall. ctest runs it (example_custom_loss in tests/CMakeLists.txt).
//
//   ./custom_loss
#include <cstdio>

#include <torch/torch.h>

#include <kd/kd.h>
#include <kd/losses/registry.h>
#include <kd/losses/weighted_sum.h>

namespace {

struct ConfidenceKLOptions {
  /// Softmax temperature of both distributions (> 0); the loss is scaled by T².
  TORCH_ARG(double, temperature) = 2.0;
};

/// L = T²·Σ_b c_b·KL(p_t^T(b) ‖ p_s^T(b)) / Σ_b c_b,  c_b = max_k softmax(z_t(b))_k (detached).
/// Parts: "kl" (the total) and "confidence" (the mean c_b).
class ConfidenceKLImpl : public torch::nn::Cloneable<ConfidenceKLImpl> {
 public:
  explicit ConfidenceKLImpl(ConfidenceKLOptions options = {}) : options(options) { reset(); }
  void reset() override {
    if (!(options.temperature() > 0)) throw kd::Error(kd::ErrorCategory::kValue, "temperature must be > 0");
  }
  kd::LossResult forward(const kd::DistillBatch& batch) {
    const double T = options.temperature();
    const auto zt = batch.teacher.logits.detach();
    const auto log_ps = torch::log_softmax(batch.student.logits / T, -1);
    const auto log_pt = torch::log_softmax(zt / T, -1);
    const auto kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1);  // [B]
    const auto c = std::get<0>(torch::softmax(zt, -1).max(-1));  // [B]
    kd::LossResult r;
    r.total = (c * kl).sum() / c.sum() * (T * T);
    r.parts["kl"] = r.total.detach();
    r.parts["confidence"] = c.mean();
    return r;
  }
  ConfidenceKLOptions options;
};
TORCH_MODULE(ConfidenceKL);

}  // namespace

// The one line that makes "confidence_kl" available to specs (and to kd-train configs).
KD_REGISTER_LOSS("confidence_kl", [](const kd::LossSpec& s) { return ConfidenceKL(ConfidenceKLOptions().temperature(s.number("temperature", 2.0))); }, {"temperature"});

int main() {
  torch::manual_seed(0);
  const int64_t n = 512, d = 8, classes = 4;

  // A fixed random teacher; labels are its predictions, so the student can match it.
  torch::nn::Linear t1(d, 32), t2(32, classes);
  auto teacher = [&](const torch::Tensor& x) { return t2(torch::tanh(t1(x))); };
  torch::nn::Linear s1(d, 16), s2(16, classes);
  auto student = [&](const torch::Tensor& x) { return s2(torch::relu(s1(x))); };

  const auto x = torch::randn({n, d});
  torch::Tensor teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_logits = teacher(x) * 3.0;  // sharpen: a confident teacher
  }
  const auto labels = teacher_logits.argmax(-1);

  auto& registry = kd::LossRegistry::global();
  kd::WeightedSum loss = registry.sum({kd::LossSpec("confidence_kl").name("ckl").weight(0.7).set("temperature", 2.0),
                                       kd::LossSpec("hard_label_ce").name("ce").weight(0.3)});

  std::vector<torch::Tensor> params = s1->parameters();
  for (const auto& p : s2->parameters()) params.push_back(p);
  for (const auto& p : loss->parameters()) params.push_back(p);  // none here; a learned weighting would add some
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));

  // The loss on all the data, before and after training.
  auto full_loss = [&] {
    torch::NoGradGuard no_grad;
    kd::DistillBatch all;
    all.student.logits = student(x);
    all.teacher.logits = teacher_logits;
    all.targets = labels;
    return loss->forward(all).total.item<double>();
  };
  const double first = full_loss();

  const int64_t steps = 100, batch_size = 128;
  for (int64_t step = 0; step < steps; ++step) {
    const auto idx = torch::randint(n, {batch_size}, torch::kLong);
    kd::DistillBatch batch;
    batch.student.logits = student(x.index_select(0, idx));
    batch.teacher.logits = teacher_logits.index_select(0, idx);
    batch.targets = labels.index_select(0, idx);
    batch.step.global_step = step;
    batch.step.stage_step = step;
    batch.step.stage_steps = steps;
    batch.step.progress = double(step) / double(steps);

    opt.zero_grad();
    const kd::LossResult r = loss->forward(batch);
    r.total.backward();
    opt.step();

    if (step % 20 == 0 || step == steps - 1) {
      std::printf("step %3lld  loss %.4f ", static_cast<long long>(step), r.total.item<double>());
      for (const auto& [name, v] : r.parts) std::printf(" %s=%.4f", name.c_str(), v.item<double>());
      std::printf("\n");
    }
  }

  const double last = full_loss();
  torch::NoGradGuard no_grad;
  const double agree = (student(x).argmax(-1) == labels).to(torch::kFloat64).mean().item<double>();
  const bool fell = last < first;
  std::printf("loss on all %lld examples %.4f -> %.4f (%s); the student agrees with the teacher on %.1f%% of them\n",
              static_cast<long long>(n), first, last, fell ? "fell" : "did not fall", 100 * agree);
  return fell ? 0 : 1;
}
