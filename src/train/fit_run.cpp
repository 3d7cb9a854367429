#include "fit_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"
#include "kd/core/generators_kept.h"
#include "kd/dist/gradient_sync.h"
#include "kd/losses/loss_traits.h"
#include "kd/train/lr_schedule.h"
#include "kd/train/stop_signal.h"
#include "stage_optimizer.h"
#include "teacher_source.h"

namespace kd::detail {
namespace {

using Clock = std::chrono::steady_clock;

/// Runs `fn` with the EMA weights (and BatchNorm statistics) in `model`, then puts the trained ones back.
template <typename Fn>
auto with_ema_weights(Ema& ema, torch::nn::Module& model, Fn fn) {
  std::vector<torch::Tensor> trained, trained_buffers;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model.parameters()) trained.push_back(p.detach().clone());
    for (auto& b : model.buffers()) trained_buffers.push_back(b.detach().clone());
    ema.copy_to(model);
  }
  auto result = fn();
  torch::NoGradGuard no_grad;
  auto params = model.parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(trained[i]);
  auto buffers = model.buffers();
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(trained_buffers[i]);
  return result;
}

std::string describe_parts(const LossResult& r) {
  std::string out;
  for (const auto& [name, v] : r.parts) {
    if (name.rfind("w.", 0) == 0) continue;
    out += fmt::format("{}{} {:.4g}", out.empty() ? "" : ", ", name, v.defined() ? v.item<double>() : NAN);
  }
  return out.empty() ? "no parts" : out;
}

// Where a micro-batch with a non-finite loss holds NaN or Inf: its inputs, the student's outputs, the
// teacher's (naming their source, and for logits the training-set rows); "" when all are finite.
std::string nonfinite_outputs(const DistillBatch& b, const TeacherSource* teacher, const torch::Tensor& rows) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> found;
  const auto bad = [](const torch::Tensor& t) {
    return t.defined() && t.is_floating_point() && !torch::isfinite(t.detach()).all().item<bool>();
  };
  const auto check = [&](const std::string& who, const ModelOutput& out) {
    if (bad(out.logits)) {
      const auto per_row = torch::isfinite(out.logits.detach().reshape({out.logits.size(0), -1})).all(1).logical_not();
      const auto at = rows.index({per_row.cpu()});
      std::string listed;
      for (int64_t i = 0; i < std::min<int64_t>(at.numel(), 5); ++i) {
        listed += fmt::format("{}{}", i ? ", " : "", at[i].item<int64_t>());
      }
      found.push_back(fmt::format("{} logits {} (training rows {}{})", who, shape_string(out.logits), listed,
                                  at.numel() > 5 ? fmt::format(" and {} more", at.numel() - 5) : ""));
    }
    for (size_t i = 0; i < out.hidden_states.size(); ++i) {
      if (bad(out.hidden_states[i])) found.push_back(fmt::format("{} hidden state {} {}", who, i, shape_string(out.hidden_states[i])));
    }
    for (size_t i = 0; i < out.attentions.size(); ++i) {
      if (bad(out.attentions[i])) found.push_back(fmt::format("{} attention map {} {}", who, i, shape_string(out.attentions[i])));
    }
  };
  if (bad(b.inputs)) found.push_back(fmt::format("the inputs {}", shape_string(b.inputs)));
  check("the student's", b.student);
  if (teacher) check(teacher->name() + ":", b.teacher);
  std::string out;
  for (const auto& f : found) out += (out.empty() ? "" : "; ") + f;
  return out;
}

// The step's sums of losses and gradients divided by the items they are over: the global batch's means.
// Nothing counted (every target ignored): the sums are zero, and stay so.
void to_means(LossResult& sum, const std::vector<torch::Tensor>& params, double counted) {
  if (counted <= 0 || counted == 1) return;
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined()) p.mutable_grad().div_(counted);
  }
  sum.total = sum.total / counted;
  for (auto& [name, v] : sum.parts) v = v / counted;
}

// Adds `r * share` (detached) to `sum`, part by part.
void accumulate(LossResult& sum, const LossResult& r, double share) {
  sum.total = sum.total.defined() ? sum.total + r.total.detach() * share : r.total.detach() * share;
  for (const auto& [name, v] : r.parts) {
    auto d = v.detach() * share;
    auto it = sum.parts.find(name);
    if (it == sum.parts.end()) sum.parts[name] = d;
    else it->second = it->second + d;
  }
}

}  // namespace

struct FitRun::StageRun {
  StageRun(int64_t index, Stage& stage, int64_t total, const StagedTrainerOptions& o)
      : index(index),
        stage(stage),
        total(total),
        schedule(WarmupCosineOptions(1.0, total).warmup_steps(std::min(o.warmup_steps(), total - 1)).min_lr(o.min_lr_factor())) {}

  int64_t index;
  Stage& stage;
  int64_t total;  // optimizer steps in the stage
  WarmupCosine schedule;
  std::unique_ptr<TeacherSource> teacher;  // null: the stage needs no teacher outputs
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::vector<double> base_lrs;
  std::vector<torch::Tensor> hook_params;
  std::vector<torch::Tensor> all_params;  // every parameter the optimizer steps
  std::unique_ptr<dist::GradientSync> gradient_sync;
  Ema* ema = nullptr;  // updated after each step when the stage averages weights
  std::vector<torch::Tensor> student_buffers;
  StepInfo info;
  torch::Tensor order;  // the current epoch's example order

  void sync_hooks() {
    for (auto& h : stage.hooks()) h->sync_weights();
  }
};

struct FitRun::StepResult {
  LossResult loss;  // averaged over the step's micro-batches (and ranks)
  double grad_norm = 0.0;
  double lr = 0.0;
  int64_t examples = 0;
  NonFiniteGuard::Action action = NonFiniteGuard::Action::kApply;
  Clock::time_point start;
  double communication_before = 0.0;
};

FitRun::FitRun(StagedTrainer& trainer, const data::TensorDataset& train, const data::TensorDataset* validation)
    : trainer_(trainer),
      o_(trainer.options_),
      train_(train),
      validation_(validation),
      device_(trainer.student_->parameters().empty() ? torch::Device(torch::kCPU)
                                                     : trainer.student_->parameters().front().device()),
      guard_(o_.nonfinite(), o_.lr_backoff(), o_.max_consecutive_nonfinite()) {
  n_ = train.size();
  micro_per_epoch_ = (n_ + o_.batch_size() - 1) / o_.batch_size();
  steps_per_epoch_ = (micro_per_epoch_ + o_.accumulation() - 1) / o_.accumulation();
  if (o_.ema_decay() > 0) ema_ = std::make_shared<Ema>(*trainer_.student_, o_.ema_decay());
  // Every stage's loss lives in the checkpoint, so a loss shared by later stages
  // (a projection reused from stage 1 in stage 2) resumes with its trained state.
  order_ = std::make_unique<ExampleOrder>(o_, train_, trainer_.student_, trainer_.teacher_);
  all_losses_ = loss_entry([](size_t) { return true; });
  all_losses_->to(device_);
  restored_losses_ = all_losses_;
  if (o_.process_group() && o_.process_group()->world_size() > 1) group_ = o_.process_group().get();
  is_main_ = !group_ || group_->is_main();
  if (is_main_) callbacks_ = trainer_.callbacks_;
  can_eval_ = validation_ && validation_->size() > 0 && trainer_.eval_task_for(*validation_) != EvalTask::kNone;
}

FitRun::~FitRun() = default;

TrainSummary FitRun::fit(bool resume) {
  check();
  if (!o_.checkpoint_dir().empty()) {
    ckpt_ = std::make_unique<CheckpointManager>(CheckpointOptions(o_.checkpoint_dir()).keep_last(o_.keep_last()));
  }
  for (bool restoring = resume;; restoring = true) {  // once, plus once per rollback
    std::optional<std::string> resume_path;
    if (restoring) resume_path = restore();
    if (!fit_began_) begin_fit();
    const Outcome outcome = run_stages(std::move(resume_path));
    if (outcome.kind != Outcome::kRollback) return finish(outcome.stop_signal);
  }
}

void FitRun::check() {
  // Parameters first: which ones each stage trains. Flags as they were afterwards.
  auto& student = trainer_.student_;
  std::vector<bool> flags;
  for (auto& p : student->parameters()) flags.push_back(p.requires_grad());
  for (const auto& stage : trainer_.stages_) {
    select_trainable(*student, stage);
    // A stage's hooks may add or rename parameters (LoRA adapters), so later patterns are checked when they run.
    if (!stage.hooks().empty()) break;
  }
  auto params = student->parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].requires_grad_(flags[i]);
  check_stages();
}

void FitRun::check_stages() {
  GeneratorsKept generators;  // a loss may draw (RewardWeighting); the run must not notice
  std::vector<torch::Tensor> kept;  // the losses' buffers (RewardWeighting's action), restored afterwards
  {
    torch::NoGradGuard no_grad;
    for (auto& b : all_losses_->buffers()) kept.push_back(b.clone());
  }
  auto& student = trainer_.student_;
  const bool training = student->is_training();
  student->eval();  // no dropout, no BatchNorm statistics updated
  const auto rows = torch::arange(std::min<int64_t>(2, n_), torch::kInt64);
  int64_t classes = 0;
  const auto count = static_cast<int64_t>(trainer_.stages_.size());
  try {
    for (int64_t si = 0; si < count; ++si) {
      Stage& stage = trainer_.stages_[si];
      try {
        DistillBatch batch;
        batch.inputs = train_.inputs.index_select(0, rows).to(device_);
        batch.targets = train_.targets.index_select(0, rows).to(device_);
        if (train_.mask.defined()) batch.mask = train_.mask.index_select(0, rows).to(device_);
        batch.step.stage_steps = trainer_.stage_length(stage, steps_per_epoch_);
        batch.step.sanity_check = true;
        auto source = teacher_source(needs_input_grad(*stage.loss().ptr()));
        if (source) source->fill(batch, rows);
        batch.student = student->forward(batch.inputs);
        const auto r = stage.loss().forward<LossResult>(batch);
        if (!r.total.defined() || r.total.dim() != 0) {
          throw Error(ErrorCategory::kValue, fmt::format("the loss returned a total of shape {}, expected a scalar",
                                                         shape_string(r.total)));
        }
        if (batch.student.logits.defined() && batch.student.logits.dim() == 2) classes = batch.student.logits.size(1);
      } catch (const Error& e) {
        throw Error(e.category(), fmt::format("stage {}/{} '{}' (checked on the first training examples, before "
                                              "training): {}",
                                              si + 1, count, stage.name(), e.message()));
      }
    }
  } catch (...) {
    student->train(training);
    throw;
  }
  student->train(training);
  {
    torch::NoGradGuard no_grad;
    auto buffers = all_losses_->buffers();
    for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(kept[i]);
  }
  if (classes > 0) {
    check_targets(train_, classes, "training set");
    if (validation_) check_targets(*validation_, classes, "validation set");
  }
}

void FitRun::check_targets(const data::TensorDataset& data, int64_t classes, const char* what) const {
  const auto& y = data.targets;
  if (!y.defined() || y.dim() != 1 || y.is_floating_point() || y.numel() == 0) return;
  const auto bad = ((y < 0) | (y >= classes)) & (y != o_.ignore_index());
  if (!bad.any().item<bool>()) return;
  const auto first = bad.nonzero()[0][0].item<int64_t>();
  throw Error(ErrorCategory::kValue,
              fmt::format("{}: example {} has class {}, outside [0, {}) of the student's {} logits ({} such examples); "
                          "fix the labels or the model's number of classes",
                          what, first, y[first].item<int64_t>(), classes, classes, bad.sum().item<int64_t>()));
}

std::shared_ptr<torch::nn::Module> FitRun::loss_entry(const std::function<bool(size_t)>& include) const {
  auto entry = std::make_shared<torch::nn::Module>("StageLosses");
  const auto& stages = trainer_.stages_;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (include(i)) entry->register_module(fmt::format("stage{}", i), stages[i].loss().ptr());
  }
  // Hook state (LoRA adapters, QAT observers) travels in the same checkpoint entry, named by first use.
  std::vector<StageHook*> seen_hooks;
  for (size_t i = 0; i < stages.size(); ++i) {
    for (const auto& h : stages[i].hooks()) {
      if (std::find(seen_hooks.begin(), seen_hooks.end(), h.get()) != seen_hooks.end()) continue;
      auto st = h->state();
      if (st && include(i)) entry->register_module(fmt::format("hook{}_{}", seen_hooks.size(), h->name()), st);
      seen_hooks.push_back(h.get());
    }
  }
  if (auto st = order_->state()) entry->register_module("hard_examples", st);
  return entry;
}

std::optional<std::string> FitRun::restore() {
  auto path = ckpt_->latest();
  if (!path) {
    if (!fit_began_) spdlog::info("no checkpoint in {}; starting from scratch", o_.checkpoint_dir());
    return path;
  }
  const TrainingState before = state_;
  if (!fit_began_) check_resumable(*path);
  state_ = ckpt_->load(*path, {trainer_.student_.get(), restored_losses_.get(), nullptr, ema_.get()}, o_.fingerprint());
  if (fit_began_) {  // a rollback: keep the run's counters, lower the learning rates again
    state_.nonfinite_steps = before.nonfinite_steps;
    state_.rollbacks = before.rollbacks + 1;
    state_.lr_scale = std::min(before.lr_scale, state_.lr_scale) * o_.lr_backoff();
    spdlog::warn("rolled back to {} (step {}); learning rates now x{:.4g}", *path, state_.global_step, state_.lr_scale);
  } else {
    summary_.resumed = true;
    summary_.resumed_from_step = state_.global_step;
    spdlog::info("resuming from {} (stage {}, step {})", *path, state_.stage_index + 1, state_.global_step);
  }
  return path;
}

void FitRun::check_resumable(const std::string& path) {
  const TrainingState saved = ckpt_->read_state(path);
  const auto& now = o_.stage_fingerprints();
  const auto& then = saved.stage_fingerprints;
  if (saved.config_fingerprint != o_.fingerprint() || now.empty() || then.empty()) {
    if (saved.config_fingerprint == o_.fingerprint() && now == then) return;
    throw Error(ErrorCategory::kConfig,
                fmt::format("checkpoint '{}' was written under a different configuration{} (fingerprint {} vs {}); "
                            "resume with the original config or start a new output folder",
                            path, now.empty() || then.empty() ? "" : " (outside the stages)",
                            saved.config_fingerprint, o_.fingerprint()));
  }
  const auto& stages = trainer_.stages_;
  auto stage_name = [&](size_t i) {
    return fmt::format("stage {}/{} '{}'", i + 1, stages.size(), i < stages.size() ? stages[i].name() : "");
  };
  // The stages the checkpoint holds the result of, and the one it is part-way through.
  const auto done = static_cast<size_t>(saved.stage_index);
  const size_t kept = done + (saved.stage_step > 0 ? 1 : 0);
  if (kept > now.size()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("checkpoint '{}' is {} stage {} of the run, but the config has {} stages; resume with "
                            "the original stages or start a new output folder",
                            path, saved.stage_step > 0 ? "in" : "past", kept, now.size()));
  }
  for (size_t i = 0; i < kept; ++i) {
    if (i < then.size() && then[i] == now[i]) continue;
    if (i < done) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("{} changed since checkpoint '{}' was written, and that checkpoint has finished it; "
                              "only stages not yet begun may change: put the stage back as it was, or start a new "
                              "output folder",
                              stage_name(i), path));
    }
    // Part-way through the changed stage: its start may still be on disk.
    std::optional<std::string> start;
    for (const auto& p : ckpt_->list()) {
      const auto st = ckpt_->read_state(p);
      if (st.stage_index == saved.stage_index && st.stage_step == 0) start = p;
    }
    throw Error(ErrorCategory::kConfig,
                fmt::format("{} changed since checkpoint '{}' was written {} steps into it; {}",
                            stage_name(i), path, saved.stage_step,
                            start ? fmt::format("the stage's start is checkpoint '{}': move the checkpoints after it "
                                                "out of '{}' to resume from there with the new definition, or put the "
                                                "stage back as it was",
                                                *start, o_.checkpoint_dir())
                                  : fmt::format("no checkpoint of the stage's start is kept (keep_last {}): put the "
                                                "stage back as it was, or start a new output folder",
                                                o_.keep_last())));
  }
  std::vector<std::string> changed;
  for (size_t i = kept; i < now.size(); ++i) {
    if (i >= then.size() || then[i] != now[i]) changed.push_back(stage_name(i));
  }
  if (!changed.empty()) {
    // The checkpoint holds no state (or another) of the changed stages' losses and hooks: those start afresh.
    restored_losses_ = loss_entry([&](size_t i) { return i < then.size() && then[i] == now[i]; });
    spdlog::info("{} changed or added since checkpoint '{}'; not begun there, so {} as now defined",
                 fmt::join(changed, ", "), path, changed.size() == 1 ? "it runs" : "they run");
  }
}

void FitRun::begin_fit() {
  FitInfo info;
  info.student_parameters = parameter_count(*trainer_.student_);
  info.student_bytes = parameter_bytes(*trainer_.student_);
  if (trainer_.teacher_) {
    info.teacher_parameters = parameter_count(**trainer_.teacher_);
    info.teacher_bytes = parameter_bytes(**trainer_.teacher_);
  }
  info.train_examples = n_;
  info.stages = static_cast<int64_t>(trainer_.stages_.size());
  for (const auto& stage : trainer_.stages_) info.total_steps += trainer_.stage_length(stage, steps_per_epoch_);
  info.resumed = summary_.resumed;
  info.resumed_from_step = summary_.resumed_from_step;
  for (auto& cb : callbacks_) cb->on_fit_begin(info);
  fit_began_ = true;
}

FitRun::Outcome FitRun::run_stages(std::optional<std::string> resume_path) {
  const auto count = static_cast<int64_t>(trainer_.stages_.size());
  for (int64_t si = state_.stage_index; si < count; ++si) {
    const Outcome outcome = run_stage(si, resume_path);
    if (outcome.kind != Outcome::kDone) return outcome;
    // The stage-end checkpoint holds everything up to here.
    if (si + 1 < count) {
      if (const int stop_signal = stop_requested()) return {Outcome::kStopped, stop_signal};
    }
  }
  return {};
}

FitRun::Outcome FitRun::run_stage(int64_t stage_index, std::optional<std::string>& resume_path) {
  auto s = prepare_stage(stage_index, resume_path);
  while (state_.stage_step < s->total) {
    const StepResult step = train_step(*s);
    if (step.action == NonFiniteGuard::Action::kRollback) return {Outcome::kRollback, 0};
    if (const int stop_signal = after_step(*s, step)) return {Outcome::kStopped, stop_signal};
  }
  s->info.global_step = state_.global_step;
  s->info.stage_step = state_.stage_step;
  s->info.progress = 1.0;
  for (auto& cb : callbacks_) cb->on_stage_end(s->stage, s->info);
  return {};
}

std::unique_ptr<FitRun::StageRun> FitRun::prepare_stage(int64_t si, std::optional<std::string>& resume_path) {
  Stage& stage = trainer_.stages_[si];
  auto& student = trainer_.student_;
  auto loss_module = stage.loss().ptr();
  loss_module->train();
  const bool input_grad = needs_input_grad(*loss_module);
  std::vector<torch::Tensor> loss_params;
  for (auto& p : loss_module->parameters()) if (p.requires_grad()) loss_params.push_back(p);
  auto s = std::make_unique<StageRun>(si, stage, trainer_.stage_length(stage, steps_per_epoch_), o_);
  select_trainable(*student, stage);
  for (auto& h : stage.hooks()) {
    for (auto& p : h->on_stage_begin(*student, stage)) s->hook_params.push_back(p);
  }
  if (student->parameters().empty()) {
    throw Error(ErrorCategory::kValue, fmt::format("stage '{}': the student has no parameters", stage.name()));
  }
  s->optimizer = make_stage_optimizer(o_, stage, *student, s->hook_params, loss_params, s->base_lrs);
  for (auto& g : s->optimizer->param_groups()) {
    for (auto& p : g.params()) s->all_params.push_back(p);
  }
  // Data-parallel: the step's last backward sends its gradients in buckets while it runs.
  if (group_) s->gradient_sync = std::make_unique<dist::GradientSync>(o_.process_group(), s->all_params);
  try {
    s->teacher = teacher_source(input_grad);
  } catch (const Error& e) {
    throw Error(e.category(), fmt::format("stage '{}': {}", stage.name(), e.message()));
  }
  s->ema = stage.ema() ? ema_.get() : nullptr;

  const bool mid_stage = resume_path && si == state_.stage_index && state_.stage_step > 0;
  if (mid_stage) {
    // Mid-stage: the optimizer's moments are part of the exact state.
    ckpt_->load(*resume_path, {student.get(), restored_losses_.get(), s->optimizer.get(), ema_.get()},
                o_.fingerprint());
  } else if (!(resume_path && si == state_.stage_index)) {
    state_.stage_index = si;
    state_.stage_step = 0;
    state_.epoch = 0;
    state_.batch_in_epoch = 0;
  }
  resume_path.reset();
  if (group_) {
    // Every rank starts the stage from rank 0's weights: the student, the loss's and the hooks' own.
    std::vector<torch::Tensor> start = student->parameters();
    for (auto& b : student->buffers()) start.push_back(b);
    for (auto& p : all_losses_->parameters()) start.push_back(p);
    for (auto& b : all_losses_->buffers()) start.push_back(b);
    for (auto& p : s->hook_params) start.push_back(p);
    torch::NoGradGuard no_grad;
    dist::broadcast_from_main(*group_, start);
  }
  s->student_buffers = student->buffers();

  s->info.stage_steps = s->total;
  s->info.global_step = state_.global_step;
  s->info.stage_step = state_.stage_step;
  for (auto& cb : callbacks_) cb->on_stage_begin(stage, s->info);
  spdlog::info("stage {}/{} '{}': {} steps ({} per epoch of {} examples)", si + 1, trainer_.stages_.size(),
               stage.name(), s->total, steps_per_epoch_, n_);
  student->train();
  s->sync_hooks();
  s->order = torch::tensor(order_->epoch(si, state_.epoch, /*restored=*/mid_stage), torch::kInt64);
  return s;
}

std::unique_ptr<TeacherSource> FitRun::teacher_source(bool input_grad) {
  if (input_grad) {
    if (!trainer_.teacher_ || o_.teacher_cache() || o_.self_distillation()) {
      throw Error(ErrorCategory::kValue,
                  "its loss needs input gradients of the teacher (R1), so it needs a live teacher: no teacher cache "
                  "and no self-distillation");
    }
    return input_gradient_teacher(*trainer_.teacher_);
  }
  if (o_.self_distillation()) {
    return function_teacher(
        [this](const torch::Tensor& inputs) {
          auto& student = trainer_.student_;
          return with_ema_weights(*ema_, *student, [&] {
            torch::NoGradGuard no_grad;
            const bool training = student->is_training();
            student->eval();
            auto out = student->forward(inputs).detach();
            student->train(training);
            return out;
          });
        },
        "the student's EMA (self-distillation)");
  }
  if (o_.teacher_cache()) return cached_teacher(o_.teacher_cache(), device_);
  if (trainer_.teacher_) return live_teacher(*trainer_.teacher_);
  return nullptr;
}

std::vector<torch::Tensor> FitRun::next_micro_batches(StageRun& s, int64_t& examples) {
  std::vector<torch::Tensor> micro;
  examples = 0;
  for (int64_t a = 0; a < o_.accumulation(); ++a) {
    if (state_.batch_in_epoch == micro_per_epoch_) {
      ++state_.epoch;
      state_.batch_in_epoch = 0;
      s.sync_hooks();
      s.order = torch::tensor(order_->epoch(s.index, state_.epoch, /*restored=*/false), torch::kInt64);
      if (a > 0) break;  // an optimizer step never spans two epochs
    }
    const int64_t b = state_.batch_in_epoch++;
    micro.push_back(s.order.slice(0, b * o_.batch_size(), std::min(n_, (b + 1) * o_.batch_size())));
    examples += micro.back().numel();
    if (state_.batch_in_epoch == micro_per_epoch_) break;
  }
  return micro;
}

LossResult FitRun::forward_backward(StageRun& s, const std::vector<torch::Tensor>& micro, std::string& diagnosis) {
  auto& student = trainer_.student_;
  LossResult step_loss;
  double counted = 0;  // the step's items (LossResult::count, else examples) over every micro-batch and rank
  // One micro-batch on one process: its mean is the step's mean, so it back-propagates as it is and
  // the gradients skip the rescaling pass.
  const bool one_mean = micro.size() == 1 && !group_;
  for (size_t m = 0; m < micro.size(); ++m) {
    // Data-parallel: this rank's shard of the micro-batch. A rank whose shard is empty runs one
    // example with weight 0, so that every rank reports the same loss parts.
    torch::Tensor idx = micro[m];
    double weight = 1.0;
    if (group_) {
      const auto [begin, end] = dist::shard_range(micro[m].numel(), group_->rank(), group_->world_size());
      idx = begin < end ? micro[m].slice(0, begin, end) : micro[m].slice(0, 0, 1);
      if (begin == end) weight = 0.0;
    }
    DistillBatch batch;
    batch.inputs = train_.inputs.index_select(0, idx).to(device_);
    batch.targets = train_.targets.index_select(0, idx).to(device_);
    if (train_.mask.defined()) batch.mask = train_.mask.index_select(0, idx).to(device_);
    if (o_.augmentation()) o_.augmentation()->apply(batch.inputs, batch.targets, batch.mask);
    batch.step = s.info;
    for (auto& h : s.stage.hooks()) h->before_forward(s.info);
    if (o_.adversarial().epsilon() > 0) {
      batch.inputs = adversarial_inputs(*student->model(), batch.inputs, batch.targets, batch.mask, o_.adversarial());
    }
    LossResult r;
    {
      AutocastGuard autocast(device_, o_.precision());
      if (s.teacher) s.teacher->fill(batch, idx);
      batch.student = student->forward(batch.inputs);
      r = s.stage.loss().forward<LossResult>(batch);
    }  // backward runs outside autocast, as PyTorch recommends
    if (!r.total.defined() || r.total.dim() != 0) {
      throw Error(ErrorCategory::kValue, fmt::format("stage '{}': the loss returned a total of shape {}, expected a scalar",
                                                     s.stage.name(), shape_string(r.total)));
    }
    if (diagnosis.empty() && !std::isfinite(r.total.item<double>())) {
      diagnosis = nonfinite_outputs(batch, s.teacher.get(), idx);
      if (diagnosis.empty()) diagnosis = "the inputs and the models' outputs are finite (check the loss's options and the learning rate)";
      else diagnosis = "NaN or Inf in " + diagnosis;
    }
    // Sums, not means, until every micro-batch of every rank is in: each mean weighs by what it is over.
    const double count = one_mean ? 1.0 : weight * r.count.value_or(double(idx.numel()));
    if (s.gradient_sync && m + 1 == micro.size()) s.gradient_sync->arm();
    (one_mean ? r.total : r.total * count).backward();
    accumulate(step_loss, r, count);
    counted += count;
  }
  if (s.gradient_sync) {
    std::vector<torch::Tensor> reported = {step_loss.total.detach().clone(), torch::scalar_tensor(counted, torch::kFloat64)};
    for (auto& [name, v] : step_loss.parts) reported.push_back(v.detach().clone());
    s.gradient_sync->finish(reported);
    step_loss.total = reported[0];
    counted = reported[1].item<double>();
    size_t k = 2;
    for (auto& [name, v] : step_loss.parts) v = reported[k++];
  }
  to_means(step_loss, s.all_params, counted);
  return step_loss;
}

FitRun::StepResult FitRun::train_step(StageRun& s) {
  StepResult step;
  step.start = Clock::now();
  step.communication_before = group_ ? group_->communication_seconds() : 0.0;
  if (group_ && !s.student_buffers.empty()) {
    torch::NoGradGuard no_grad;
    dist::broadcast_from_main(*group_, s.student_buffers);
  }
  s.info.global_step = state_.global_step;
  s.info.stage_step = state_.stage_step;
  s.info.epoch = state_.epoch;
  s.info.progress = double(state_.stage_step) / double(s.total);

  // Gather this step's micro-batches first (an optimizer step never spans two epochs).
  const auto micro = next_micro_batches(s, step.examples);
  s.optimizer->zero_grad();
  std::string diagnosis;  // where a micro-batch's non-finite loss came from
  step.loss = forward_backward(s, micro, diagnosis);

  std::vector<torch::Tensor> norms;
  for (auto& p : s.all_params) if (p.grad().defined()) norms.push_back(p.grad().detach().norm().to(torch::kDouble));
  step.grad_norm = norms.empty() ? 0.0 : torch::stack(norms).norm().item<double>();
  const double loss_value = step.loss.total.item<double>();
  s.schedule.apply(*s.optimizer, state_.stage_step, s.base_lrs);
  if (state_.lr_scale != 1.0) {
    for (auto& g : s.optimizer->param_groups()) g.options().set_lr(g.options().get_lr() * state_.lr_scale);
  }
  step.lr = s.optimizer->param_groups()[0].options().get_lr();
  const auto describe = [&] {
    return fmt::format("non-finite {} at step {} (stage '{}', step {}/{}): loss {}, gradient norm {} ({}){}",
                       std::isfinite(loss_value) ? "gradient" : "loss", state_.global_step + 1, s.stage.name(),
                       state_.stage_step + 1, s.total, loss_value, step.grad_norm, describe_parts(step.loss),
                       diagnosis.empty() ? std::string() : "; " + diagnosis);
  };
  step.action = guard_.check(std::isfinite(loss_value) && std::isfinite(step.grad_norm), describe, ckpt_.get(), state_);
  if (step.action == NonFiniteGuard::Action::kApply) {
    if (o_.clip_norm() > 0) torch::nn::utils::clip_grad_norm_(s.all_params, o_.clip_norm());
    s.optimizer->step();
    for (auto& h : s.stage.hooks()) h->after_step(s.info);
    if (s.ema) s.ema->update(*trainer_.student_);
  } else {
    s.optimizer->zero_grad();
  }
  return step;
}

int FitRun::after_step(StageRun& s, const StepResult& step) {
  ++state_.stage_step;
  ++state_.global_step;
  StepReport report;
  report.step = s.info;
  report.loss = step.loss;
  report.lr = step.lr;
  report.grad_norm = step.grad_norm;
  report.samples_per_s =
      step.examples / std::max(1e-9, std::chrono::duration<double>(Clock::now() - step.start).count());
  report.skipped_nonfinite = step.action != NonFiniteGuard::Action::kApply;
  report.nonfinite_total = state_.nonfinite_steps;
  report.communication_s = group_ ? group_->communication_seconds() - step.communication_before : 0.0;
  for (auto& cb : callbacks_) cb->on_step_end(report);

  const bool stage_done = state_.stage_step == s.total;
  if (stage_done) {
    // Before the stage-end checkpoint, so a resume never redoes what the hook finishes (LoRA's merge).
    for (auto& h : s.stage.hooks()) h->on_stage_end(*trainer_.student_, s.stage);
  }
  // A stop during a stage's last step comes after the stage's end (evaluation, callbacks).
  const int stop_signal = stage_done ? 0 : stop_requested();
  if (ckpt_ && is_main_ &&
      (stage_done || stop_signal || (o_.checkpoint_every() > 0 && state_.global_step % o_.checkpoint_every() == 0))) {
    save_checkpoint(s, stage_done, stop_signal);
  }
  if (can_eval_ && (stage_done || (s.stage.eval_every() > 0 && state_.stage_step % s.stage.eval_every() == 0))) {
    evaluate_now(s);
  }
  return stop_signal;
}

void FitRun::save_checkpoint(StageRun& s, bool stage_done, int stop_signal) {
  // A finished stage is saved as the start of the next one, so a resume never repeats it.
  TrainingState saved = state_;
  saved.config_fingerprint = o_.fingerprint();
  saved.stage_fingerprints = o_.stage_fingerprints();
  if (stage_done) {
    saved.stage_index = s.index + 1;
    saved.stage_step = saved.epoch = saved.batch_in_epoch = 0;
  }
  const auto path = ckpt_->save(
      saved, {trainer_.student_.get(), all_losses_.get(), stage_done ? nullptr : s.optimizer.get(), ema_.get()});
  restored_losses_ = all_losses_;  // a rollback now returns to a checkpoint of these stages
  if (stop_signal) spdlog::info("stop requested (signal {}): checkpoint {} written", stop_signal, path);
}

void FitRun::evaluate_now(StageRun& s) {
  s.sync_hooks();  // weights as the optimizer just left them
  for (auto& h : s.stage.hooks()) h->on_eval_begin();
  const auto run = [&] { return trainer_.evaluate(*validation_, s.stage.name(), state_.global_step); };
  auto result = ema_ && o_.eval_on_ema() ? with_ema_weights(*ema_, *trainer_.student_, run) : run();
  for (auto& h : s.stage.hooks()) h->on_eval_end();
  if (!result.metrics.empty()) {
    for (auto& cb : callbacks_) cb->on_eval(result);
    summary_.evaluations.push_back(result);
  }
}

int FitRun::stop_requested() {
  int signal = StopSignal::requested();
  if (group_) {
    std::vector<torch::Tensor> flag = {torch::tensor({int64_t(signal)}, torch::kInt64)};
    group_->all_reduce_max(flag);
    signal = static_cast<int>(flag[0].item<int64_t>());
  }
  return signal;
}

TrainSummary FitRun::finish(int stop_signal) {
  // Every parameter trains again after the run, whatever the last stage froze.
  for (auto& p : trainer_.student_->parameters()) p.requires_grad_(true);
  summary_.steps = state_.global_step;
  summary_.stopped_by_signal = stop_signal;
  summary_.nonfinite_steps = state_.nonfinite_steps;
  summary_.rollbacks = state_.rollbacks;
  summary_.lr_scale = state_.lr_scale;
  trainer_.ema_ = ema_;
  for (auto& cb : callbacks_) cb->on_fit_end(summary_);
  if (stop_signal) {
    spdlog::warn("stopped by signal {} after step {}{}", stop_signal, state_.global_step,
                 ckpt_ ? fmt::format("; continue with resume from {}", o_.checkpoint_dir()) : std::string());
  }
  return summary_;
}

}  // namespace kd::detail
