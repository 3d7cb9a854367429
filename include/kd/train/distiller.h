#pragma once
/// \file
/// A single-stage distillation loop: the building block the staged trainer runs per stage.

#include <functional>
#include <optional>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/modules/container/any.h>

#include "kd/core/student.h"
#include "kd/core/teacher.h"
#include "kd/data/tensor_dataset.h"
#include "kd/losses/distill_batch.h"

namespace kd {

/// Options for Distiller.
struct DistillerOptions {
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, batch_size) = 128;
  TORCH_ARG(double, lr) = 1e-3;             ///< AdamW learning rate
  TORCH_ARG(double, weight_decay) = 1e-2;   ///< AdamW decoupled weight decay
  TORCH_ARG(uint64_t, seed) = 0;            ///< seeds the epoch shuffles
  TORCH_ARG(int64_t, log_every) = 100;      ///< steps between progress lines (0 = none)
};

/// What one epoch of Distiller::fit did.
struct EpochSummary {
  int64_t epoch = 0;
  int64_t steps = 0;
  double mean_loss = 0.0;
  std::map<std::string, double> mean_parts;  ///< each loss part averaged over the epoch
  double val_accuracy = -1.0;                ///< -1 when no validation set was given
  double seconds = 0.0;
  double samples_per_s = 0.0;
};

/// Trains `student` on `loss` for a number of epochs with AdamW: per batch,
/// the teacher (if any) runs frozen, the student runs, the loss gets both
/// outputs and the targets, and the student and the loss's own parameters
/// step. Without a teacher it is plain supervised training (how the bundled
/// examples train their teachers from scratch).
///
/// `loss` is any module with `kd::LossResult forward(const kd::DistillBatch&)`.
///
/// Example:
/// ```
/// kd::WeightedSum loss(...);   // or kd::TemperatureKL(...)
/// kd::Distiller d(student, teacher, torch::nn::AnyModule(loss), kd::DistillerOptions().epochs(2));
/// auto history = d.fit(train, &validation);
/// ```
class Distiller {
 public:
  Distiller(Student student, std::optional<Teacher> teacher, torch::nn::AnyModule loss,
            DistillerOptions options = {});

  std::vector<EpochSummary> fit(const data::TensorDataset& train,
                                const data::TensorDataset* validation = nullptr);

  /// Called after every optimizer step with the step's loss result.
  std::function<void(const StepInfo&, const LossResult&)> on_step;

 private:
  Student student_;
  std::optional<Teacher> teacher_;
  torch::nn::AnyModule loss_;
  DistillerOptions options_;
};

/// Top-1 accuracy of `model` on `dataset`, in eval mode under no-grad; the
/// model's training flag is restored afterwards.
double classification_accuracy(Model& model, const data::TensorDataset& dataset,
                               int64_t batch_size = 512);

/// Number of elements in all parameters of `module`.
int64_t parameter_count(const torch::nn::Module& module);

}  // namespace kd
