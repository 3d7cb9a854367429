// A loss plugin for kd-train: a shared library whose KD_REGISTER_LOSS line adds "logit_cosine" to the losses
// a config may name, without rebuilding kd-train.
//
//   cmake --build build --target kd_example_plugin          # build/examples/libkd_example_plugin.so
//   kd-train --plugin build/examples/libkd_example_plugin.so list
//   kd-train --plugin build/examples/libkd_example_plugin.so distill --config my.json
//       with {"type": "logit_cosine", "name": "cos", "weight": 0.5, "scale": 1.0} in a stage's "losses"
//
// Build your own the same way: one .cpp, `add_library(my_losses MODULE my_losses.cpp)` and
// `target_link_libraries(my_losses PRIVATE kdistill::kdistill)` against the installed package.
#include <torch/torch.h>

#include <kd/kd.h>
#include <kd/losses/registry.h>

namespace {

struct LogitCosineOptions {
  /// Multiplies the loss.
  TORCH_ARG(double, scale) = 1.0;
};

/// L = scale · mean_b (1 − cos(z_s(b), z_t(b))): the direction of the student's logits against the teacher's,
/// blind to their scale (a temperature-free soft-target term). Part: "cos", the mean cosine similarity.
class LogitCosineImpl : public torch::nn::Cloneable<LogitCosineImpl> {
 public:
  explicit LogitCosineImpl(LogitCosineOptions options = {}) : options(options) { reset(); }
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& batch) {
    const auto s = batch.student.logits.flatten(0, -2);  // [N, C] (or [N·L, C] for token logits)
    const auto t = batch.teacher.logits.detach().flatten(0, -2);
    const auto cos = torch::cosine_similarity(s, t, /*dim=*/1);
    kd::LossResult r;
    r.total = options.scale() * (1 - cos).mean();
    r.parts["cos"] = cos.mean().detach();
    return r;
  }
  LogitCosineOptions options;
};
TORCH_MODULE(LogitCosine);

}  // namespace

KD_REGISTER_LOSS(
    "logit_cosine",
    [](const kd::LossSpec& s) { return LogitCosine(LogitCosineOptions().scale(s.number("scale", 1.0))); }, {"scale"},
    "scale·(1 − cos(student logits, teacher logits)), batch mean (examples/plugin)");
