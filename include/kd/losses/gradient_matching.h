#pragma once
/// \file
/// R1 gradient matching: match the gradient of the task loss with respect to the inputs.

#include <string>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "kd/core/enum_names.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/loss_traits.h"
#include "kd/losses/schedule.h"

namespace kd {

/// How the student's and the teacher's input gradients are brought to one space.
enum class GradientSpace {
  kAuto,          ///< kRaw when the two gradients have the same shape, else kPositionNorm
  kRaw,           ///< element by element (images: g has the input's shape [B, C, H, W])
  kPositionNorm,  ///< ‖g‖₂ over the last dimension: token embeddings [B, L, D_s] and [B, L, D_t]
                  ///< become per-token gradient norms [B, L], comparable across widths
};
inline constexpr EnumNames<GradientSpace, 3> kGradientSpaceNames{
    {{{GradientSpace::kAuto, "auto"}, {GradientSpace::kRaw, "raw"}, {GradientSpace::kPositionNorm, "position_norm"}}}};

/// How far apart the two (mapped) input gradients are.
enum class GradientDistance {
  kMse,     ///< mean squared difference: scales with the gradients, which are small next to a KL (R1's form)
  kCosine,  ///< 1 − cos(φ(g_s)_b, φ(g_t)_b) per example b (flattened over its counted positions), batch mean:
            ///< in [0, 2] whatever the gradients' size, so λ weighs two terms of comparable scale
};
inline constexpr EnumNames<GradientDistance, 2> kGradientDistanceNames{
    {{{GradientDistance::kMse, "mse"}, {GradientDistance::kCosine, "cosine"}}}};

/// Options for GradientMatching.
struct GradientMatchingOptions {
  /// λ as a function of the stage's progress; default 0.8 early to 0.3 late. Values must lie in [0, 1].
  TORCH_ARG(Schedule, lambda) = Schedule::linear(0.8, 0.3);
  /// Temperature of the KL part (> 0), as in TemperatureKL (scaled by T²).
  TORCH_ARG(double, temperature) = 1.0;
  /// Where the differentiated inputs are: "" = `batch.inputs` / `batch.teacher_inputs`
  /// (images); otherwise the key of `ModelOutput::extras` under which each model puts
  /// its input embeddings (token models: the gradient is taken w.r.t. the embeddings).
  TORCH_ARG(std::string, input_key) = "";
  /// How the two gradients are compared; default kAuto.
  TORCH_ARG(GradientSpace, space) = GradientSpace::kAuto;
  /// The distance between them; default kMse.
  TORCH_ARG(GradientDistance, distance) = GradientDistance::kMse;
  /// Targets equal to this are left out of the task loss (padding in sequence models).
  TORCH_ARG(int64_t, ignore_index) = -100;
};

namespace functional {

/// ∂/∂inputs of the task loss Σ_n CE(logits_n, targets_n) — the cross-entropy
/// SUMMED over examples (and non-ignored positions), so each example's slice is
/// its own input gradient, whatever the batch size. `create_graph` keeps the
/// result differentiable (the student's side).
///
/// Throws kd::Error: kState when `inputs` does not require grad or `logits` were
/// not computed from it; kValue for missing or non-integer targets, or a counted
/// target outside [0, C) (naming the targets' and the logits' shapes); kShape
/// naming both shapes when the targets are not the logits' shape without the
/// class dimension.
///
/// Example: `auto g = kd::functional::task_input_gradient(out.logits, x, y, /*create_graph=*/false);`
torch::Tensor task_input_gradient(const torch::Tensor& logits, const torch::Tensor& inputs,
                                  const torch::Tensor& targets, bool create_graph, int64_t ignore_index = -100);

/// L = λ·D(φ(g_s), φ(g_t)) + (1−λ)·KL_T(p_t ‖ p_s), D the options' distance (MSE by default), with
/// g_s = task_input_gradient(student_logits, student_inputs, y, create_graph=true),
/// g_t = task_input_gradient(teacher_logits, teacher_inputs, y).detach(), φ the
/// GradientSpace map, and:
/// - counted positions: those with mask ≠ 0 (a [B, L] `mask` with the targets'
///   shape) and target ≠ ignore_index; y is the targets with the uncounted
///   positions set to ignore_index, so the task loss leaves padding out;
/// - MSE: the mean over elements; over real positions (mask ≠ 0) when `mask` is
///   [B, L] and the compared tensors are [B, L] or [B, L, D];
/// - KL_T = T²/N·Σ_{counted rows} KL(p_t ‖ p_s), functional::temperature_kl over
///   the rows functional::kl_counted_rows(student_logits, mask, y, ignore_index)
///   gives (teacher detached): per example for [B, C], per counted token for
///   [B, L, V].
///
/// Throws the errors of task_input_gradient. NaN or Inf in the inputs or logits
/// give a non-finite loss or non-finite gradients (with an infinite input the
/// value can stay finite while the double backward is not); kd::StagedTrainer
/// checks both every step and applies its non-finite policy.
///
/// Example: `auto l = kd::functional::gradient_matching(zs, xs, zt, xt, y, 0.5);`
torch::Tensor gradient_matching(const torch::Tensor& student_logits, const torch::Tensor& student_inputs,
                                const torch::Tensor& teacher_logits, const torch::Tensor& teacher_inputs,
                                const torch::Tensor& targets, double lambda,
                                const GradientMatchingOptions& options = {}, const torch::Tensor& mask = {});

}  // namespace functional

/// R1 gradient matching:
///
///   L = λ(p)·MSE(φ(g_s), φ(g_t)) + (1−λ(p))·KL_T(p_t ‖ p_s),   g = ∂ Σ_n CE(z_n, y_n) / ∂ inputs,
///
/// λ(p) = options.lambda()(batch.step.progress), masked by `batch.mask` and
/// `ignore_index` (see functional::gradient_matching for every term).
///
/// What the batch must carry: `batch.inputs` requiring grad with
/// `batch.student` computed from it, and `batch.teacher_inputs`, a separate
/// leaf requiring grad, with `batch.teacher` computed from it by
/// `Teacher::forward_with_input_grad` (the trainer does both when
/// `needs_input_grad()` is true). With `input_key` set, the models' input
/// embeddings in `extras[input_key]` play that role instead: token ids cannot
/// require grad, so Teacher::forward_with_input_grad does not apply; run the
/// teacher's model with grad mode on and have it make its (frozen) embeddings
/// require grad. Missing pieces throw kd::Error (kState, or kModel for a
/// missing extras key) saying which.
///
/// Cost: g_s needs a backward pass with create_graph, the final backward goes
/// through that graph again (double backward), and the teacher runs with
/// autograd on plus a backward to its inputs. Measured with
/// `build/bench/bench_r1_cost 10` (bench/r1_cost.cpp; CPU, Debian LibTorch 1.13.1,
/// one intra-op thread, float32, 32 random 28×28 images, kd::models::DepthwiseCnnStudent
/// in training mode; a step = teacher and student forward, loss, backward; the
/// fastest of 10 steps after a warm-up, ratio to the same step with plain
/// TemperatureKL and a no-grad teacher), 3 runs on an otherwise idle 2-core machine
/// (bench/RESULTS.md):
/// - with a kd::models::CnnTeacher of widths 16/32, hidden 64: 7.8–8.0× (10.0 ms → 79.8 ms);
/// - with a teacher as small as the student: 7.7–7.8× (8.1 ms → 62 ms), ≈ the student-side cost.
/// Runs on the same machine while compilers ran gave anywhere from 2× to 12×.
/// The autograd profiler puts most of the final backward in BatchNorm's double
/// backward (a composite of elementwise ops in LibTorch 1.13) and the
/// convolutions' double backward. Budget about 8× a plain KD step.
///
/// With GradientDistance::kCosine the gradient term is
///
///   D = 1/B Σ_b (1 − ⟨a_b, c_b⟩ / max(‖a_b‖·‖c_b‖, 1e-12)),   a = φ(g_s), c = φ(g_t), flattened per example,
///
/// masked positions set to 0 in both; scale-free, so at λ = 0.5 the two terms weigh alike (MSE gradients of
/// images are ~1e-3 next to a KL of ~0.1, which makes MSE R1 a re-weighted KL).
///
/// Parts: "r1" (the total), "r1.grad_mse" (or "r1.grad_cosine"), "r1.kl", "r1.lambda", and "r1.grad_share",
/// λ·D / (λ·D + (1−λ)·KL), the gradient term's share of the loss.
///
/// Example:
/// ```
/// kd::GradientMatching r1(kd::GradientMatchingOptions().lambda(kd::Schedule::linear(0.8, 0.3)).temperature(2.0));
/// batch.inputs = images.requires_grad_(true);
/// batch.teacher_inputs = images.detach().clone().requires_grad_(true);
/// batch.student = student->forward(batch.inputs);
/// batch.teacher = teacher->forward_with_input_grad(batch.teacher_inputs);
/// kd::LossResult r = r1->forward(batch);   // r.parts["r1.grad_mse"], r.parts["r1.kl"], ...
/// r.total.backward();
/// ```
class GradientMatchingImpl : public torch::nn::Cloneable<GradientMatchingImpl>, public NeedsInputGrad {
 public:
  explicit GradientMatchingImpl(GradientMatchingOptions options = {});
  void reset() override;
  LossResult forward(const DistillBatch& batch);

  /// Tells a trainer to make the inputs require grad and to run the teacher with input gradients.
  bool needs_input_grad() const override { return true; }

  GradientMatchingOptions options;
};
TORCH_MODULE(GradientMatching);

}  // namespace kd
