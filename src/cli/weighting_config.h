#pragma once
// A stage's "weighting" object of a kd-train config: the policy that weighs the stage's loss terms each step
// (kd::WeightedSum's policy) instead of their fixed weights.
//
//   "weighting": {"policy": "uncertainty", "init_log_var": 0}
//   "weighting": {"policy": "reward", "metric": "", "lr": 0.05, "noise_std": 0.1, "baseline_momentum": 0.9, "scale": 0}
//   "weighting": {"policy": "min_norm", "shared": ["^features\\."], "solver": "auto"}
//   "weighting": {"policy": "layer_similarity", "slope": 0.5, "midpoint": 6, "clamp_negative": true,
//                 "normalize": "sum_to_count", "layers": {"term": [teacher_layer, student_layer]}}
//
// No "weighting" (or "policy": "fixed") keeps each term's own weight. A policy multiplies what the terms'
// weights give (kd::WeightedSum). The reward policy learns from the stage's validation evaluations, so its
// stage needs "eval_every"; min_norm and reward take one extra backward pass per term, or an evaluation.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kd/core/model.h"
#include "kd/losses/registry.h"
#include "kd/losses/weighting/layer_similarity.h"
#include "kd/losses/weighting/min_norm.h"
#include "kd/losses/weighting/policy.h"
#include "kd/train/reward_feedback.h"

namespace kd::app {

enum class WeightingPolicyKind { kFixed, kUncertainty, kReward, kMinNorm, kLayerSimilarity };

/// The config name of each policy ("fixed", "uncertainty", "reward", "min_norm", "layer_similarity"), in the
/// order `kd-train list` shows them, with a line on what it does.
struct WeightingPolicyName {
  WeightingPolicyKind kind;
  const char* name;
  const char* description;
};
const std::vector<WeightingPolicyName>& weighting_policy_names();
/// The config name of `kind` ("uncertainty").
const char* weighting_policy_name(WeightingPolicyKind kind);

/// One stage's "weighting" object, validated.
struct WeightingConfig {
  WeightingPolicyKind policy = WeightingPolicyKind::kFixed;
  // uncertainty (kd::UncertaintyWeighting)
  double init_log_var = 0.0;
  // reward (kd::RewardWeighting + kd::RewardFeedback); metric "" = the run's evaluation.best_metric
  std::string metric;
  double lr = 0.05, noise_std = 0.1, baseline_momentum = 0.9, scale = 0.0;
  // min_norm (kd::MinNormWeighting); shared: regexes over student parameter names, empty = all
  std::vector<std::string> shared;
  MinNormSolver solver = MinNormSolver::kAuto;
  // layer_similarity (kd::LayerSimilarityPolicy)
  LayerSimilarityPolicyOptions similarity;
};

/// The keys of a "weighting" object with their defaults, per policy (the schema `kd-train list` prints).
nlohmann::json weighting_defaults(WeightingPolicyKind policy);

/// Parses and validates the "weighting" object of stage `stage` (at JSON path `path`, e.g. "stages[1]"):
/// the policy name, every key it may have, types and ranges, layer terms that are terms of the stage, a
/// layer_similarity stage with a term it can weigh, a reward stage with eval_every. Absent: kFixed.
/// Throws kd::Error (kConfig) naming `origin` and the JSON path, e.g. "stages[1].weighting.lr".
WeightingConfig stage_weighting(const nlohmann::json& stage, const std::vector<LossSpec>& terms,
                                const std::string& origin, const std::string& path);

/// A stage's policy made for `student`, and the callback a reward policy learns through (null otherwise).
struct MadeWeighting {
  AnyWeighting policy;                       ///< empty for kFixed
  std::shared_ptr<RewardFeedback> feedback;  ///< kReward: add to the trainer
};

/// Makes the policy of stage `stage_name` with `num_terms` terms. min_norm takes the student's parameters
/// that `shared` selects (kd::Error kConfig naming the patterns when none matches); reward's feedback reads
/// `metric` from each of the stage's evaluations, `higher_is_better` deciding the reward's sign.
MadeWeighting make_weighting(const WeightingConfig& config, int64_t num_terms, const std::string& stage_name,
                             Model& student, const std::string& metric, bool higher_is_better);

}  // namespace kd::app
