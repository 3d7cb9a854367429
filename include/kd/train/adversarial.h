#pragma once
/// \file
/// Adversarial distillation: FGSM examples made against the student, on which the teacher and the
/// student are then compared like on any other input.

#include <cstdint>
#include <optional>

#include <torch/arg.h>
#include <torch/types.h>

#include "kd/core/model.h"
#include "kd/data/tensor_dataset.h"
#include "kd/train/metrics.h"

namespace kd {

/// Options for adversarial_inputs() and StagedTrainerOptions::adversarial.
struct AdversarialOptions {
  /// Images (floating-point inputs): the L∞ step ε of FGSM. Token ids: the share of each sequence's
  /// real tokens that are flipped (at least one when > 0). 0 turns adversarial examples off.
  TORCH_ARG(double, epsilon) = 0.0;
  /// Share of each micro-batch replaced by its adversarial version (the first ⌈ratio·n⌉ examples,
  /// which the epoch's shuffle makes a random choice); the rest stay clean.
  TORCH_ARG(double, ratio) = 0.5;
  /// Token ids never written by a flip (padding), or −1 for none.
  TORCH_ARG(int64_t, pad_token) = 0;
  /// Images: the valid input range [lo, hi] FGSM examples are clamped to, as the standard attack
  /// keeps pixels inside [0, 1] — for normalised inputs the normalised bounds (Fashion-MNIST:
  /// kd::data::kFashionMnistBlank to (1 − mean)/std). Without it a black pixel could go below black.
  /// Unset (the default) clamps nothing.
  TORCH_ARG(std::optional<double>, input_min) = std::nullopt;
  TORCH_ARG(std::optional<double>, input_max) = std::nullopt;
};

/// The inputs with their first ⌈ratio·n⌉ examples replaced by adversarial ones, made against `student`
/// with the gradient g of its cross-entropy on `targets` (kd::functional::hard_label_ce: class indices,
/// next-token targets or soft targets; `mask` zeros are ignored), computed in eval mode (no BatchNorm
/// statistics or dropout draws change) and without touching parameter gradients:
///
///   images (FGSM, Goodfellow et al. 2015):   x' = clamp(x + ε·sign(∇ₓ L), input_min, input_max)
///   token ids (HotFlip, Ebrahimi et al. 2018, the discrete FGSM on embeddings):
///       g_t = ∂L/∂e_t at each position's embedding e_t = E[x_t] (the model's extras["embeddings"]);
///       the gain of writing token v at t is (E_v − E_{x_t})·g_t; the ⌈ε·(real tokens)⌉ positions with
///       the largest best gain get their best token (never pad_token, never a padded position)
///
/// so the teacher and the student see the same perturbed inputs (token ids, whatever each model's
/// embedding width). Token models must return extras["embeddings"] and hold the embedding matrix
/// as a parameter named "embed.weight" (kd::models::TransformerEncoder and CausalLM do); kd::Error
/// (kModel) says which is missing. kd::Error (kValue) for ε < 0, a ratio outside [0, 1] or
/// input_min > input_max.
///
/// Example:
/// ```
/// auto x_adv = kd::adversarial_inputs(*student, images, labels, {}, kd::AdversarialOptions().epsilon(0.05));
/// ```
torch::Tensor adversarial_inputs(Model& student, const torch::Tensor& inputs, const torch::Tensor& targets,
                                 const torch::Tensor& mask, const AdversarialOptions& options);

/// White-box robustness: the model's classification metrics on `dataset` with every input
/// replaced by its FGSM example made against the model itself (adversarial_inputs with
/// `options` and ratio 1: x' = clamp(x + ε·sign(∇ₓ CE), input_min, input_max)), in batches.
/// The model's training flag is restored; parameter gradients are not touched.
///
/// Example: `double robust = kd::evaluate_under_fgsm(*student, test, 10, kd::AdversarialOptions().epsilon(0.05)).accuracy();`
ClassificationMetrics evaluate_under_fgsm(Model& model, const data::TensorDataset& dataset, int64_t num_classes,
                                          const AdversarialOptions& options, int64_t batch_size = 512);

}  // namespace kd
