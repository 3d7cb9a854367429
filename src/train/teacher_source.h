#pragma once
// Private to src/train: where a training step's teacher outputs come from, one implementation per source.

#include <functional>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "kd/core/model_output.h"
#include "kd/core/teacher.h"
#include "kd/data/teacher_cache.h"
#include "kd/losses/distill_batch.h"

namespace kd::detail {

/// Fills DistillBatch::teacher for one micro-batch. StagedTrainer picks the source per stage: input
/// gradients when the stage's loss needs them (R1), else self-distillation, else the cache, else the live
/// teacher; a stage with none of them (the student alone) has no source and leaves `teacher` empty.
class TeacherSource {
 public:
  virtual ~TeacherSource() = default;
  /// `batch.inputs` are on the student's device; `rows` are the micro-batch's rows of the training set.
  virtual void fill(DistillBatch& batch, const torch::Tensor& rows) = 0;
  /// What the outputs come from, for messages: "the teacher", "the teacher cache 'PATH'", ...
  virtual std::string name() const = 0;
};

/// The frozen teacher run on the batch's inputs.
std::unique_ptr<TeacherSource> live_teacher(Teacher teacher);

/// For losses that differentiate w.r.t. the inputs (R1 gradient matching): floating-point inputs become
/// leaves that require grad, and the teacher runs on a separate copy of them (`batch.teacher_inputs`)
/// with Teacher::forward_with_input_grad. Token ids stay as they are (such models expose differentiable
/// embeddings in their extras).
std::unique_ptr<TeacherSource> input_gradient_teacher(Teacher teacher);

/// Outputs read from a cache built over the training set in its order, moved to `device`: no teacher forward.
std::unique_ptr<TeacherSource> cached_teacher(std::shared_ptr<data::TeacherCache> cache, torch::Device device);

/// Outputs of `forward` on the batch's inputs, e.g. the student with its EMA weights (self-distillation);
/// `name` says what they are in messages.
std::unique_ptr<TeacherSource> function_teacher(std::function<ModelOutput(const torch::Tensor&)> forward,
                                                std::string name);

}  // namespace kd::detail
