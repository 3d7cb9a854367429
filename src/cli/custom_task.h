#pragma once
// kd-train's "custom" task: models and data the user brings.
//
//   teacher.torchscript  a TorchScript file (kd::ScriptModel's output conventions), used as it is
//   student.torchscript  a TorchScript file whose parameters are trained in place; written back as
//                        OUT/student.ts.pt (torch.jit.load-able)
//   data.train           a safetensors file with tensors "inputs" [N, ...], "targets" [N] (class ids) or
//                        [N, L] (token ids), optionally "mask" [N, L] (1 = real token)
//   data.validation      optional; without it data.validation_fraction of data.train is held out
//   data.test            optional; without it the test scores are the validation split's
//   data.num_classes     0 = inferred: max(targets) + 1 for [N] targets; [N, L] targets are a language model
//
// The task's metrics follow the targets: accuracy and macro-F1 for class ids, bits per token (reported as
// "bits_per_byte"), perplexity and token accuracy for token ids.

#include <string>

#include <nlohmann/json.hpp>

#include "task.h"

namespace kd::app {

/// The custom task with `classes` classes (a config's data.num_classes, which decides the metrics; 0 = a
/// language model).
const Task& custom_task(int64_t classes);

/// `config` with data.num_classes filled in when it is 0: max(targets) + 1 of data.train's [N] integer targets,
/// left 0 for [N, L] token targets (a language model). kd::Error naming the file and the fix when data.train is
/// not given, missing or not a usable safetensors file.
nlohmann::json with_custom_classes(nlohmann::json config);

/// `config` with "teacher_dims" / "student_dims" filled in for every term that gives neither and whose loss takes
/// both (feature_l2: a learned projection between paired layers), when
/// the paired layers differ in width: both models run once on the first two training examples (a model's
/// hidden state [N, C, H, W] has width C, [N, L, D] or [N, D] width D). Terms whose widths agree are left as
/// they are (no projection).
RunConfig with_feature_dims(const RunConfig& config, const data::TensorDataset& train, const torch::Device& device);

}  // namespace kd::app
