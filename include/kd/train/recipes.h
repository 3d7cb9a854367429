#pragma once
/// \file
/// Built-in distillation recipes, as stage specs a program or a config can edit.

#include <vector>

#include <torch/arg.h>

#include "kd/train/stage_spec.h"

namespace kd {

/// Options for progressive3(). Layer indices are over ModelOutput::hidden_states
/// (features) and ModelOutput::attentions; negative ones count from the end.
/// The defaults fit kd::models::CnnTeacher → kd::models::DepthwiseCnnStudent.
struct Progressive3Options {
  /// Feature pairs: teacher_layers[i] with student_layers[i]; where the widths
  /// differ (student_dims[i] ≠ teacher_dims[i]) a learnable projection is added.
  TORCH_ARG(std::vector<int64_t>, teacher_layers) = {0, 1};
  TORCH_ARG(std::vector<int64_t>, student_layers) = {0, 1};
  TORCH_ARG(std::vector<int64_t>, student_dims) = {16, 32};
  TORCH_ARG(std::vector<int64_t>, teacher_dims) = {32, 64};
  /// Attention pairs (over `attentions`).
  TORCH_ARG(std::vector<int64_t>, attention_teacher_layers) = {0, 1};
  TORCH_ARG(std::vector<int64_t>, attention_student_layers) = {0, 1};
  /// L = feature_weight·L_feat + attention_weight·L_attn + kl_weight·L_kl + ce_weight·L_ce.
  TORCH_ARG(double, feature_weight) = 1.0;
  TORCH_ARG(double, attention_weight) = 0.5;
  TORCH_ARG(double, kl_weight) = 0.8;
  /// Hard labels in stage 3 (0 leaves the term out).
  TORCH_ARG(double, ce_weight) = 0.2;
  TORCH_ARG(double, temperature) = 3.0;
  /// Epochs of stages 1, 2, 3.
  TORCH_ARG(std::vector<int64_t>, epochs) = {1, 1, 2};
  TORCH_ARG(double, lr) = 1e-3;
};

/// The progressive three-phase recipe (features → attention → logits):
///
/// | stage        | loss |
/// |--------------|------|
/// | "features"   | L = w_f·L_feat |
/// | "attention"  | L = w_f·L_feat + w_a·L_attn |
/// | "logits"     | L = w_f·L_feat + w_a·L_attn + w_k·L_kl(T) + w_c·L_ce |
///
/// with w_f = 1, w_a = 0.5, w_k = 0.8, T = 3 by default (the combined form
/// L = L_feat + 0.5·L_attn + 0.8·L_kl of the source documents) and w_c = 0.2.
/// L_feat is kd::FeatureL2, L_attn kd::AttentionMSE, L_kl kd::TemperatureKL,
/// L_ce kd::HardLabelCE; terms are named "feat", "attn", "kl", "ce", and the
/// "feat" and "attn" modules (with their projections) carry over from stage to
/// stage (see build_stages()).
///
/// Throws kd::Error (kConfig) when `epochs` does not have three entries or a
/// weight is negative.
///
/// Example:
/// ```
/// auto specs = kd::progressive3(kd::Progressive3Options().epochs({1, 1, 3}));
/// kd::StagedTrainer trainer(student, teacher, kd::build_stages(specs));
/// ```
std::vector<StageSpec> progressive3(const Progressive3Options& options = {});

}  // namespace kd
