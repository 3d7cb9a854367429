#pragma once
/// \file
/// What a teacher or student returns for one batch.

#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace kd {

/// The outputs of one forward pass, in the shape every loss understands.
///
/// - `logits`: [B, C] for classifiers, [B, L, V] for sequence models.
/// - `hidden_states`: per-layer features, [B, L, D] or [B, C, H, W];
///   index 0 is the first layer the model chose to expose.
/// - `attentions`: per-layer attention probabilities, [B, H, L, L].
/// - `extras`: anything else a custom loss needs, by name.
///
/// Example:
/// ```
/// kd::ModelOutput out;
/// out.logits = head(x);
/// out.hidden_states.push_back(features);
/// ```
struct ModelOutput {
  torch::Tensor logits;
  std::vector<torch::Tensor> hidden_states;
  std::vector<torch::Tensor> attentions;
  std::map<std::string, torch::Tensor> extras;

  /// A copy with every tensor moved to `device` (no copy where it already is).
  ModelOutput to(const torch::Device& device) const;
  /// A copy with every tensor detached from the autograd graph.
  ModelOutput detach() const;
  /// Number of examples (logits' first dimension); throws if logits are missing.
  int64_t batch_size() const;
};

/// `extras` key of a model that ran fewer layers than it has (dynamic depth): a scalar integer tensor, the
/// number of its last layers that did not run for this batch. Its hidden_states and attentions then hold
/// the layers that ran only; FeatureL2 and AttentionMSE resolve student layer indices against the whole
/// depth and skip, for that batch, the pairs whose student layer did not run.
inline constexpr char kSkippedLayers[] = "skipped_layers";

/// The number of layers `output` skipped (extras[kSkippedLayers]), 0 when it says none.
int64_t skipped_layers(const ModelOutput& output);

/// Throws kd::Error (kShape) when a student's and a teacher's logits cannot be
/// compared element for element, naming both shapes (e.g. class counts differ).
void check_logits_comparable(const ModelOutput& student, const ModelOutput& teacher);

/// Formats a shape as "[2, 10]" for error messages.
std::string shape_string(const torch::Tensor& t);

}  // namespace kd
