#pragma once
/// \file
/// A teacher layer matched to a student layer, as data (FeatureL2, AttentionMSE).

#include <cstdint>
#include <optional>
#include <string>

namespace kd {

/// One matched pair of layers.
///
/// `teacher` and `student` index `ModelOutput::hidden_states` (FeatureL2) or
/// `ModelOutput::attentions` (AttentionMSE); negative indices count from the
/// end (−1 is the last layer). `weight` multiplies the pair's loss.
///
/// `student_dim` / `teacher_dim` are feature widths, read by FeatureL2 only:
/// when both are > 0 and differ, FeatureL2 learns a projection from the
/// student's width to the teacher's. 0 means "same width, no projection".
///
/// Example:
/// ```
/// kd::LayerPair same{/*teacher=*/-1, /*student=*/-1};                 // last layers, weight 1
/// kd::LayerPair wide{/*teacher=*/5, /*student=*/2, /*weight=*/0.5, /*student_dim=*/256, /*teacher_dim=*/768};
/// ```
struct LayerPair {
  int64_t teacher = -1;
  int64_t student = -1;
  double weight = 1.0;
  int64_t student_dim = 0;
  int64_t teacher_dim = 0;
};

/// Resolves a student layer index against the student's whole depth: the `ran` layers it ran plus the
/// `skipped` ones it did not (dynamic depth, kd::kSkippedLayers). Returns the index into the `ran` outputs,
/// or nothing when that layer did not run, which it logs the first time (`said` is the caller's flag);
/// throws as resolve_layer_index when the index is out of range of the whole depth.
/// Example: index −1 of a 2-layer student that ran 1 layer → nothing; index 0 → 0.
std::optional<int64_t> resolve_student_layer(int64_t index, size_t ran, int64_t skipped, const std::string& loss,
                                             size_t pair, const std::string& what, bool& said);

/// Resolves a possibly negative layer index against `count` layers; throws
/// kd::Error (kValue) naming the loss, the pair, the index and the count when
/// it is out of range.
int64_t resolve_layer_index(int64_t index, size_t count, const std::string& loss, size_t pair,
                            const std::string& side, const std::string& what);

}  // namespace kd
