#include "kd/train/tensorboard_logger.h"

#include <utility>
#include <vector>

#include <torch/torch.h>

namespace kd {

TensorBoardLogger::TensorBoardLogger(std::string dir) : dir_(std::move(dir)) {}

void TensorBoardLogger::on_fit_begin(const FitInfo& info) {
  // Opened only now that fit() has accepted the run: a refused resume leaves the folder as it was.
  writer_ = std::make_unique<TensorBoardWriter>(dir_);
  // TensorBoard drops what this folder's earlier files logged from this step on: what a killed process logged after
  // the checkpoint a resume starts from, or a whole earlier run in the same folder.
  writer_->add_session_start(info.resumed ? info.resumed_from_step + 1 : 1);
}

void TensorBoardLogger::on_step_end(const StepReport& report) {
  if (!writer_) return;
  std::vector<std::pair<std::string, double>> scalars;
  if (report.loss.total.defined()) scalars.emplace_back("loss/total", report.loss.total.item<double>());
  for (const auto& [name, value] : report.loss.parts) {
    if (!value.defined() || value.numel() != 1) continue;
    const bool weight = name.rfind("w.", 0) == 0;  // the weighted sum's effective weights: "w.<term>"
    scalars.emplace_back(weight ? "weight/" + name.substr(2) : "loss/" + name, value.item<double>());
  }
  scalars.emplace_back("train/lr", report.lr);
  scalars.emplace_back("train/grad_norm", report.grad_norm);
  scalars.emplace_back("train/samples_per_s", report.samples_per_s);
  writer_->add_scalars(report.step.global_step + 1, scalars);
}

void TensorBoardLogger::on_eval(const EvalResult& result) {
  if (!writer_) return;
  std::vector<std::pair<std::string, double>> scalars;
  for (const auto& [name, value] : result.metrics) scalars.emplace_back("validation/" + name, value);
  writer_->add_scalars(result.global_step, scalars);
}

}  // namespace kd
