#include "kd/train/staged_trainer.h"
#include "kd/train/stop_signal.h"

#include <algorithm>
#include <chrono>
#include <regex>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/data/hard_example_sampler.h"
#include "kd/dist/gradient_sync.h"
#include "kd/losses/loss_traits.h"
#include "kd/train/checkpoint.h"
#include "kd/train/ema.h"
#include "kd/train/lr_schedule.h"
#include "kd/train/metrics.h"

namespace kd {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::regex> compile_patterns(const Stage& stage, const std::vector<std::string>& patterns,
                                         const std::string& what) {
  std::vector<std::regex> out;
  for (const auto& p : patterns) {
    try {
      out.emplace_back(p);
    } catch (const std::regex_error& e) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("stage '{}': {} pattern '{}' is not a valid regex ({})", stage.name(), what, p, e.what()));
    }
  }
  return out;
}

// Marks the student's parameters trainable by the stage's patterns; returns the trainable ones.
std::vector<torch::Tensor> select_trainable(torch::nn::Module& student, const Stage& stage) {
  const auto patterns = compile_patterns(stage, stage.trainable(), "trainable");
  std::vector<torch::Tensor> out;
  for (auto& item : student.named_parameters()) {
    bool on = patterns.empty();
    for (const auto& re : patterns) on = on || std::regex_search(item.key(), re);
    item.value().requires_grad_(on);
    if (on) out.push_back(item.value());
  }
  if (out.empty()) {
    throw Error(ErrorCategory::kValue,
                fmt::format("stage '{}': no student parameter matches the trainable patterns; names look like '{}'",
                            stage.name(), student.named_parameters().is_empty() ? "" : student.named_parameters()[0].key()));
  }
  return out;
}

// One optimizer group per ParamGroup (student parameters matching its patterns, first match wins),
// then the stage's default group (the other trainable student parameters and the hooks' own), then
// the loss's parameters at loss_lr. `base_lrs` gets each group's lr, in the same order.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const StagedTrainerOptions& o, const Stage& stage,
                                                        torch::nn::Module& student,
                                                        const std::vector<torch::Tensor>& hook_params,
                                                        std::vector<torch::Tensor> loss_params,
                                                        std::vector<double>& base_lrs) {
  const auto& specs = stage.param_groups();
  std::vector<std::vector<std::regex>> patterns;
  for (size_t g = 0; g < specs.size(); ++g) {
    if (!(specs[g].lr > 0)) {
      throw Error(ErrorCategory::kValue, fmt::format("stage '{}': param_groups[{}] needs lr > 0 (got {})", stage.name(),
                                                     g, specs[g].lr));
    }
    patterns.push_back(compile_patterns(stage, specs[g].patterns, fmt::format("param_groups[{}]", g)));
  }
  std::vector<std::vector<torch::Tensor>> grouped(specs.size());
  std::vector<torch::Tensor> rest;
  for (auto& item : student.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    size_t g = 0;
    for (; g < specs.size(); ++g) {
      if (std::any_of(patterns[g].begin(), patterns[g].end(),
                      [&](const std::regex& re) { return std::regex_search(item.key(), re); })) {
        break;
      }
    }
    (g < specs.size() ? grouped[g] : rest).push_back(item.value());
  }
  for (const auto& p : hook_params) rest.push_back(p);
  if (rest.empty() && std::all_of(grouped.begin(), grouped.end(), [](const auto& v) { return v.empty(); })) {
    throw Error(ErrorCategory::kValue, fmt::format("stage '{}': nothing left to train after its hooks", stage.name()));
  }

  const bool sgd = o.optimizer() == OptimizerKind::kSgd;
  auto options_for = [&](double lr, double weight_decay) -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (sgd) {
      return std::make_unique<torch::optim::SGDOptions>(
          torch::optim::SGDOptions(lr).momentum(o.momentum()).nesterov(o.nesterov()).weight_decay(weight_decay));
    }
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
  };
  base_lrs.clear();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < specs.size(); ++g) {
    if (grouped[g].empty()) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("stage '{}': param_groups[{}] matches no trainable student parameter", stage.name(), g));
    }
    groups.emplace_back(std::move(grouped[g]),
                        options_for(specs[g].lr, specs[g].weight_decay < 0 ? o.weight_decay() : specs[g].weight_decay));
    base_lrs.push_back(specs[g].lr);
  }
  if (!rest.empty()) {
    groups.emplace_back(std::move(rest), options_for(stage.lr(), o.weight_decay()));
    base_lrs.push_back(stage.lr());
  }
  if (!loss_params.empty()) {
    const double loss_lr = stage.loss_lr() < 0 ? stage.lr() : stage.loss_lr();
    groups.emplace_back(std::move(loss_params), options_for(loss_lr, o.weight_decay()));
    base_lrs.push_back(loss_lr);
  }
  if (sgd) {
    if (o.nesterov() && !(o.momentum() > 0)) {
      throw Error(ErrorCategory::kValue, fmt::format("SGD with Nesterov momentum needs momentum > 0 (got {})", o.momentum()));
    }
    return std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(stage.lr()).momentum(o.momentum()));
  }
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(stage.lr()));
}

}  // namespace

StagedTrainer::StagedTrainer(Student student, std::optional<Teacher> teacher, std::vector<Stage> stages,
                             StagedTrainerOptions options)
    : student_(std::move(student)), teacher_(std::move(teacher)), stages_(std::move(stages)), options_(options) {
  if (stages_.empty()) throw Error(ErrorCategory::kValue, "StagedTrainer needs at least one stage");
  const auto& o = options_;
  if (o.batch_size() <= 0 || o.accumulation() <= 0 || o.clip_norm() < 0 || o.warmup_steps() < 0 ||
      !(o.ema_decay() >= 0 && o.ema_decay() < 1) || !(o.min_lr_factor() >= 0 && o.min_lr_factor() <= 1)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("StagedTrainerOptions out of range: batch_size {} (> 0), accumulation {} (> 0), "
                            "clip_norm {} (>= 0), warmup_steps {} (>= 0), ema_decay {} ([0, 1)), min_lr_factor {} ([0, 1])",
                            o.batch_size(), o.accumulation(), o.clip_norm(), o.warmup_steps(), o.ema_decay(),
                            o.min_lr_factor()));
  }
  if (!(o.hard_example_mix() >= 0 && o.hard_example_mix() <= 1) ||
      (o.hard_example_mix() > 0 && !teacher_ && !o.teacher_cache())) {
    throw Error(ErrorCategory::kValue,
                fmt::format("hard_example_mix must be in [0, 1] (got {}) and needs a teacher or a teacher cache",
                            o.hard_example_mix()));
  }
  if (o.self_distillation() && (o.ema_decay() <= 0 || teacher_ || o.teacher_cache())) {
    throw Error(ErrorCategory::kValue,
                "self_distillation uses the student's own EMA as the teacher: set ema_decay > 0 and give no "
                "teacher and no teacher_cache");
  }
  if (!(o.lr_backoff() > 0 && o.lr_backoff() <= 1) || o.max_consecutive_nonfinite() < 1) {
    throw Error(ErrorCategory::kValue,
                fmt::format("StagedTrainerOptions out of range: lr_backoff {} ((0, 1]), max_consecutive_nonfinite {} "
                            "(>= 1)",
                            o.lr_backoff(), o.max_consecutive_nonfinite()));
  }
  if (o.nonfinite() == NonFinitePolicy::kRollback && o.checkpoint_dir().empty()) {
    throw Error(ErrorCategory::kConfig,
                "the 'rollback' non-finite policy returns to the newest checkpoint, but no checkpoint_dir is set; set "
                "one (and checkpoint_every), or choose 'skip', 'lower_lr' or 'stop'");
  }
  if (o.adversarial().epsilon() > 0 && o.teacher_cache()) {
    throw Error(ErrorCategory::kConfig,
                "adversarial examples change the inputs every step, so cached teacher outputs would belong to other "
                "inputs: run the teacher online (no teacher_cache) or set adversarial epsilon to 0");
  }
  if (o.adversarial().epsilon() < 0 || o.adversarial().ratio() < 0 || o.adversarial().ratio() > 1) {
    throw Error(ErrorCategory::kConfig, fmt::format("adversarial: epsilon must be >= 0 (got {}) and ratio in [0, 1] (got {})",
                                                    o.adversarial().epsilon(), o.adversarial().ratio()));
  }
  if (o.augmentation() && o.augmentation()->stochastic() && o.teacher_cache()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("augmentation '{}' changes the inputs every epoch, so teacher outputs cached for the "
                            "un-augmented inputs would be stale: run the teacher online (no teacher_cache) or turn the "
                            "augmentation off",
                            o.augmentation()->name()));
  }
  validate_hooks();
  for (const auto& s : stages_) {
    if (s.loss().is_empty()) throw Error(ErrorCategory::kValue, fmt::format("stage '{}' has no loss", s.name()));
    if (s.steps() < 0 || s.epochs() < 0 || (s.steps() == 0 && s.epochs() == 0) || !(s.lr() > 0)) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("stage '{}': needs steps > 0 or epochs > 0 and lr > 0 (got steps {}, epochs {}, lr {})",
                              s.name(), s.steps(), s.epochs(), s.lr()));
    }
  }
}

void StagedTrainer::validate_hooks() const {
  std::vector<std::shared_ptr<StageHook>> persisting;  // hooks the model still depends on
  for (const auto& s : stages_) {
    const StageHook* rewriter = nullptr;
    for (const auto& h : s.hooks()) {
      if (!h) throw Error(ErrorCategory::kValue, fmt::format("stage '{}' lists a null hook", s.name()));
      if (!h->rewrites_weights()) continue;
      if (rewriter) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("stage '{}' enables both '{}' and '{}', which both rewrite layer weights before each "
                                "forward and would overwrite each other; use them in different stages (e.g. LoRA "
                                "merged at the end of one stage, QAT in the next)",
                                s.name(), rewriter->name(), h->name()));
      }
      rewriter = h.get();
      if (options_.ema_decay() > 0 && s.ema()) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("stage '{}' enables '{}', which rewrites layer weights, but EMA (ema_decay {}) averages "
                                "the registered weights only and would not see it; turn EMA off for this stage "
                                "(Stage::ema(false), \"ema\": false in a config) or set ema_decay 0",
                                s.name(), h->name(), options_.ema_decay()));
      }
    }
    for (const auto& p : persisting) {
      if (std::find(s.hooks().begin(), s.hooks().end(), p) == s.hooks().end()) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("stage '{}' does not enable '{}', but an earlier stage did and the model still depends "
                                "on it (QAT stays on once started; LoRA unless merged at the end of its stage): "
                                "enable it in every later stage",
                                s.name(), p->name()));
      }
    }
    for (const auto& h : s.hooks()) {
      if (h->persists_after_stage() && std::find(persisting.begin(), persisting.end(), h) == persisting.end()) {
        persisting.push_back(h);
      }
    }
  }
}

template <typename Fn>
auto StagedTrainer::with_ema_weights(Ema& ema, Fn fn) {
  // Buffers too: the EMA carries BatchNorm statistics, and the trained model's own must come back.
  std::vector<torch::Tensor> trained, trained_buffers;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : student_->parameters()) trained.push_back(p.detach().clone());
    for (auto& b : student_->buffers()) trained_buffers.push_back(b.detach().clone());
    ema.copy_to(*student_);
  }
  auto result = fn();
  torch::NoGradGuard no_grad;
  auto params = student_->parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(trained[i]);
  auto buffers = student_->buffers();
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(trained_buffers[i]);
  return result;
}

torch::Tensor StagedTrainer::all_logits(const data::TensorDataset& train, bool student) {
  const auto& cache = options_.teacher_cache();
  if (!student && cache) {
    auto out = cache->lookup(torch::arange(train.size(), torch::kLong));
    if (!out.logits.defined()) {
      throw Error(ErrorCategory::kValue, "hard-example mining needs full teacher logits; the cache holds only top-k");
    }
    return out.logits;
  }
  torch::NoGradGuard no_grad;
  auto& model = student ? *student_->model() : *(*teacher_)->model();
  const bool was_training = model.is_training();
  model.eval();
  const auto params = model.parameters();
  const auto device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < train.size(); start += 512) {
    const auto end = std::min(train.size(), start + 512);
    chunks.push_back(model.forward(train.inputs.slice(0, start, end).to(device)).logits.cpu());
  }
  model.train(was_training);
  return torch::cat(chunks);
}

std::vector<int64_t> StagedTrainer::epoch_order(const data::TensorDataset& train, int64_t stage_index, int64_t epoch) {
  const auto& o = options_;
  const uint64_t seed = o.seed() * 1000003 + static_cast<uint64_t>(stage_index);
  if (o.hard_example_mix() <= 0) return data::epoch_order(train.size(), seed, epoch);
  data::HardExampleSampler sampler(train.size(), data::HardExampleSamplerOptions().mix(o.hard_example_mix()).seed(seed));
  if (o.hardness() == Hardness::kTeacherEntropy) {
    if (!teacher_entropy_.defined()) teacher_entropy_ = data::predictive_entropy(all_logits(train, false));
    sampler.set_scores(teacher_entropy_);
  } else {
    sampler.set_scores(data::disagreement(all_logits(train, true), all_logits(train, false)).clamp_min(0));
  }
  return sampler.epoch_order(epoch);
}

int64_t StagedTrainer::stage_length(const Stage& stage, int64_t steps_per_epoch) const {
  return stage.steps() > 0 ? stage.steps() : stage.epochs() * steps_per_epoch;
}

EvalTask StagedTrainer::eval_task_for(const data::TensorDataset& dataset) const {
  if (options_.eval_task() != EvalTask::kAuto) return options_.eval_task();
  if (options_.num_classes() > 0) return EvalTask::kClassification;
  return dataset.targets.defined() && dataset.targets.dim() == 2 ? EvalTask::kLanguageModel : EvalTask::kNone;
}

EvalResult StagedTrainer::evaluate(const data::TensorDataset& dataset, const std::string& stage_name,
                                   int64_t global_step) {
  EvalResult r;
  r.stage = stage_name;
  r.global_step = global_step;
  if (dataset.size() == 0) return r;
  const EvalTask task = eval_task_for(dataset);
  // Data-parallel: each rank scores its shard, then the counts are summed.
  auto* group = options_.process_group().get();
  data::TensorDataset shard;
  if (group && group->world_size() > 1) {
    const auto [begin, end] = dist::shard_range(dataset.size(), group->rank(), group->world_size());
    shard = dataset.select(torch::arange(begin, end, torch::kInt64));
  }
  const data::TensorDataset& mine = shard.inputs.defined() ? shard : dataset;
  if (task == EvalTask::kClassification) {
    if (options_.num_classes() <= 0) {
      throw Error(ErrorCategory::kValue, "eval_task kClassification needs num_classes > 0 in StagedTrainerOptions");
    }
    auto metrics = mine.size() > 0 ? evaluate_classifier(*student_->model(), mine, options_.num_classes())
                                   : ClassificationMetrics(options_.num_classes());
    if (shard.inputs.defined()) {
      std::vector<torch::Tensor> counts = {metrics.confusion().clone()};
      group->all_reduce_sum(counts);
      metrics = ClassificationMetrics::from_confusion(counts[0]);
    }
    r.metrics["accuracy"] = metrics.accuracy();
    r.metrics["macro_f1"] = metrics.macro_f1();
    const auto f1 = metrics.per_class_f1();
    for (size_t c = 0; c < f1.size(); ++c) r.metrics[fmt::format("f1.{}", c)] = f1[c];
  } else if (task == EvalTask::kLanguageModel) {
    auto m = mine.size() > 0 ? evaluate_language_model(*student_->model(), mine, options_.ignore_index())
                             : LanguageModelMetrics{};
    if (shard.inputs.defined()) {
      std::vector<torch::Tensor> sums = {
          torch::tensor({double(m.tokens), m.nll_sum, m.token_correct}, torch::kDouble)};
      group->all_reduce_sum(sums);
      m.tokens = static_cast<int64_t>(sums[0][0].item<double>());
      m.nll_sum = sums[0][1].item<double>();
      m.token_correct = sums[0][2].item<double>();
    }
    r.metrics["nll"] = m.nll();
    r.metrics["perplexity"] = m.perplexity();
    r.metrics["bits_per_byte"] = m.bits_per_byte();
    r.metrics["token_accuracy"] = m.token_accuracy();
  }
  return r;
}

namespace {

// Thrown inside fit() to go back to the newest checkpoint (NonFinitePolicy::kRollback).
struct Rollback {};

const char* policy_name(NonFinitePolicy p) {
  switch (p) {
    case NonFinitePolicy::kStop: return "stop";
    case NonFinitePolicy::kSkipStep: return "skip";
    case NonFinitePolicy::kLowerLr: return "lower_lr";
    case NonFinitePolicy::kRollback: return "rollback";
  }
  return "?";
}

std::string describe_parts(const LossResult& r) {
  std::string out;
  for (const auto& [name, v] : r.parts) {
    if (name.rfind("w.", 0) == 0) continue;
    out += fmt::format("{}{} {:.4g}", out.empty() ? "" : ", ", name, v.defined() ? v.item<double>() : NAN);
  }
  return out.empty() ? "no parts" : out;
}

}  // namespace

TrainSummary StagedTrainer::fit(const data::TensorDataset& train, const data::TensorDataset* validation, bool resume) {
  const auto& o = options_;
  if (train.size() == 0) throw Error(ErrorCategory::kValue, "StagedTrainer::fit: the training set is empty");
  if (o.teacher_cache() && o.teacher_cache()->size() != train.size()) {
    throw Error(ErrorCategory::kState,
                fmt::format("the teacher cache holds {} examples but the training set has {}; build the cache over "
                            "this training set",
                            o.teacher_cache()->size(), train.size()));
  }
  const int64_t n = train.size();
  const int64_t micro_per_epoch = (n + o.batch_size() - 1) / o.batch_size();
  const int64_t steps_per_epoch = (micro_per_epoch + o.accumulation() - 1) / o.accumulation();
  const auto device = student_->parameters().empty() ? torch::Device(torch::kCPU)
                                                      : student_->parameters().front().device();

  std::unique_ptr<Ema> ema;
  if (o.ema_decay() > 0) ema = std::make_unique<Ema>(*student_, o.ema_decay());
  std::unique_ptr<CheckpointManager> ckpt;
  if (!o.checkpoint_dir().empty()) {
    ckpt = std::make_unique<CheckpointManager>(CheckpointOptions(o.checkpoint_dir()).keep_last(o.keep_last()));
  }

  // Every stage's loss lives in the checkpoint, so a loss shared by later stages
  // (a projection reused from stage 1 in stage 2) resumes with its trained state.
  auto all_losses = std::make_shared<torch::nn::Module>("StageLosses");
  for (size_t i = 0; i < stages_.size(); ++i) all_losses->register_module(fmt::format("stage{}", i), stages_[i].loss().ptr());
  // Hook state (LoRA adapters, QAT observers) travels in the same checkpoint entry.
  std::vector<StageHook*> seen_hooks;
  for (const auto& s : stages_) {
    for (const auto& h : s.hooks()) {
      if (std::find(seen_hooks.begin(), seen_hooks.end(), h.get()) != seen_hooks.end()) continue;
      if (auto st = h->state()) all_losses->register_module(fmt::format("hook{}_{}", seen_hooks.size(), h->name()), st);
      seen_hooks.push_back(h.get());
    }
  }
  all_losses->to(device);

  teacher_entropy_ = torch::Tensor();
  dist::ProcessGroup* group = o.process_group() && o.process_group()->world_size() > 1 ? o.process_group().get() : nullptr;
  const bool is_main = !group || group->is_main();
  // Only rank 0 logs and writes metrics; the others see the same reduced values.
  const std::vector<std::shared_ptr<Callback>> no_callbacks;
  const auto& callbacks = is_main ? callbacks_ : no_callbacks;
  // The stop request of any rank, so that all ranks stop after the same step.
  const auto stop_requested = [&] {
    int signal = StopSignal::requested();
    if (group) {
      std::vector<torch::Tensor> flag = {torch::tensor({int64_t(signal)}, torch::kInt64)};
      group->all_reduce_max(flag);
      signal = static_cast<int>(flag[0].item<int64_t>());
    }
    return signal;
  };
  const bool can_eval = validation && validation->size() > 0 && eval_task_for(*validation) != EvalTask::kNone;
  TrainSummary summary;
  TrainingState state;
  int64_t consecutive_nonfinite = 0;
  bool fit_began = false;
  bool restore = resume;
  if (resume && !ckpt) throw Error(ErrorCategory::kState, "resume asked for, but no checkpoint_dir is set");

  const auto finish = [&](int stop_signal) {
    // Every parameter trains again after the run, whatever the last stage froze.
    for (auto& p : student_->parameters()) p.requires_grad_(true);
    summary.steps = state.global_step;
    summary.stopped_by_signal = stop_signal;
    summary.nonfinite_steps = state.nonfinite_steps;
    summary.rollbacks = state.rollbacks;
    summary.lr_scale = state.lr_scale;
    for (auto& cb : callbacks) cb->on_fit_end(summary);
    if (stop_signal) {
      spdlog::warn("stopped by signal {} after step {}{}", stop_signal, state.global_step,
                   ckpt ? fmt::format("; continue with resume from {}", o.checkpoint_dir()) : std::string());
    }
    return summary;
  };

  for (;;) {  // once, plus once per rollback
    std::optional<std::string> resume_path;
    if (restore) {
      resume_path = ckpt->latest();
      if (resume_path) {
        const TrainingState before = state;
        state = ckpt->load(*resume_path, {student_.get(), all_losses.get(), nullptr, ema.get()}, o.fingerprint());
        if (fit_began) {  // a rollback: keep the run's counters, lower the learning rates again
          state.nonfinite_steps = before.nonfinite_steps;
          state.rollbacks = before.rollbacks + 1;
          state.lr_scale = std::min(before.lr_scale, state.lr_scale) * o.lr_backoff();
          spdlog::warn("rolled back to {} (step {}); learning rates now x{:.4g}", *resume_path, state.global_step,
                       state.lr_scale);
        } else {
          summary.resumed = true;
          summary.resumed_from_step = state.global_step;
          spdlog::info("resuming from {} (stage {}, step {})", *resume_path, state.stage_index + 1, state.global_step);
        }
      } else if (!fit_began) {
        spdlog::info("no checkpoint in {}; starting from scratch", o.checkpoint_dir());
      }
    }
    if (!fit_began) {
      FitInfo info;
      info.student_parameters = parameter_count(*student_);
      info.student_bytes = parameter_bytes(*student_);
      if (teacher_) {
        info.teacher_parameters = parameter_count(**teacher_);
        info.teacher_bytes = parameter_bytes(**teacher_);
      }
      info.train_examples = n;
      info.stages = static_cast<int64_t>(stages_.size());
      info.resumed = summary.resumed;
      info.resumed_from_step = summary.resumed_from_step;
      for (auto& cb : callbacks) cb->on_fit_begin(info);
      fit_began = true;
    }

    try {
      for (int64_t si = state.stage_index; si < static_cast<int64_t>(stages_.size()); ++si) {
        Stage& stage = stages_[si];
        auto loss_module = stage.loss().ptr();
        loss_module->train();
        const bool input_grad = needs_input_grad(*loss_module);
        if (input_grad && (!teacher_ || o.teacher_cache() || o.self_distillation())) {
          throw Error(ErrorCategory::kValue,
                      fmt::format("stage '{}': its loss needs input gradients of the teacher (R1), so it needs a live "
                                  "teacher: no teacher cache and no self-distillation",
                                  stage.name()));
        }
        std::vector<torch::Tensor> loss_params;
        for (auto& p : loss_module->parameters()) if (p.requires_grad()) loss_params.push_back(p);
        std::vector<double> base_lrs;
        select_trainable(*student_, stage);
        std::vector<torch::Tensor> hook_params;
        for (auto& h : stage.hooks()) {
          for (auto& p : h->on_stage_begin(*student_, stage)) hook_params.push_back(p);
        }
        if (student_->parameters().empty()) {
          throw Error(ErrorCategory::kValue, fmt::format("stage '{}': the student has no parameters", stage.name()));
        }
        auto optimizer = make_optimizer(o, stage, *student_, hook_params, loss_params, base_lrs);
        std::vector<torch::Tensor> all_params;
        for (auto& g : optimizer->param_groups()) {
          for (auto& p : g.params()) all_params.push_back(p);
        }
        // Data-parallel: the step's last backward sends its gradients in buckets while it runs.
        std::unique_ptr<dist::GradientSync> gradient_sync;
        if (group) gradient_sync = std::make_unique<dist::GradientSync>(o.process_group(), all_params);
        const auto before_forward = [&](const StepInfo& step) {
          for (auto& h : stage.hooks()) h->before_forward(step);
        };
        const auto sync_hooks = [&] {
          for (auto& h : stage.hooks()) h->sync_weights();
        };
        const int64_t total = stage_length(stage, steps_per_epoch);
        WarmupCosine schedule(WarmupCosineOptions(1.0, total)
                                  .warmup_steps(std::min(o.warmup_steps(), total - 1))
                                  .min_lr(o.min_lr_factor()));
        Ema* stage_ema = stage.ema() ? ema.get() : nullptr;

        if (resume_path && si == state.stage_index && state.stage_step > 0) {
          // Mid-stage: the optimizer's moments are part of the exact state.
          ckpt->load(*resume_path, {student_.get(), all_losses.get(), optimizer.get(), ema.get()}, o.fingerprint());
        } else if (!(resume_path && si == state.stage_index)) {
          state.stage_index = si;
          state.stage_step = 0;
          state.epoch = 0;
          state.batch_in_epoch = 0;
        }
        resume_path.reset();
        if (group) {
          // Every rank starts the stage from rank 0's weights: the student, the loss's and the hooks' own.
          std::vector<torch::Tensor> start = student_->parameters();
          for (auto& b : student_->buffers()) start.push_back(b);
          for (auto& p : all_losses->parameters()) start.push_back(p);
          for (auto& b : all_losses->buffers()) start.push_back(b);
          for (auto& p : hook_params) start.push_back(p);
          torch::NoGradGuard no_grad;
          dist::broadcast_from_main(*group, start);
        }
        const auto student_buffers = student_->buffers();

        StepInfo info;
        info.stage_steps = total;
        info.global_step = state.global_step;
        info.stage_step = state.stage_step;
        for (auto& cb : callbacks) cb->on_stage_begin(stage, info);
        spdlog::info("stage {}/{} '{}': {} steps ({} per epoch of {} examples)", si + 1, stages_.size(), stage.name(),
                     total, steps_per_epoch, n);

        student_->train();
        sync_hooks();
        auto order = torch::tensor(epoch_order(train, si, state.epoch), torch::kInt64);
        while (state.stage_step < total) {
          const auto start = Clock::now();
          const double communication_before = group ? group->communication_seconds() : 0.0;
          if (group && !student_buffers.empty()) {
            torch::NoGradGuard no_grad;
            dist::broadcast_from_main(*group, student_buffers);
          }
          info.global_step = state.global_step;
          info.stage_step = state.stage_step;
          info.epoch = state.epoch;
          info.progress = double(state.stage_step) / double(total);

          // Gather this step's micro-batches first, so each is weighted by its share of the step's examples.
          std::vector<torch::Tensor> micro;
          int64_t examples = 0;
          for (int64_t a = 0; a < o.accumulation(); ++a) {
            if (state.batch_in_epoch == micro_per_epoch) {
              ++state.epoch;
              state.batch_in_epoch = 0;
              sync_hooks();
              order = torch::tensor(epoch_order(train, si, state.epoch), torch::kInt64);
              if (a > 0) break;  // an optimizer step never spans two epochs
            }
            const int64_t b = state.batch_in_epoch++;
            micro.push_back(order.slice(0, b * o.batch_size(), std::min(n, (b + 1) * o.batch_size())));
            examples += micro.back().numel();
            if (state.batch_in_epoch == micro_per_epoch) break;
          }

          optimizer->zero_grad();
          LossResult step_result;
          for (size_t m = 0; m < micro.size(); ++m) {
            const auto& global_idx = micro[m];
            // Data-parallel: this rank's shard of the micro-batch. A rank whose shard is empty runs one
            // example with weight 0, so that every rank reports the same loss parts.
            torch::Tensor idx = global_idx;
            double weight = 1.0;
            if (group) {
              const auto [begin, end] = dist::shard_range(global_idx.numel(), group->rank(), group->world_size());
              idx = begin < end ? global_idx.slice(0, begin, end) : global_idx.slice(0, 0, 1);
              if (begin == end) weight = 0.0;
            }
            DistillBatch batch;
            batch.inputs = train.inputs.index_select(0, idx).to(device);
            batch.targets = train.targets.index_select(0, idx).to(device);
            if (train.mask.defined()) batch.mask = train.mask.index_select(0, idx).to(device);
            if (o.augmentation()) o.augmentation()->apply(batch.inputs, batch.targets, batch.mask);
            batch.step = info;
            LossResult r;
            before_forward(info);
            if (o.adversarial().epsilon() > 0) {
              batch.inputs = adversarial_inputs(*student_->model(), batch.inputs, batch.targets, batch.mask, o.adversarial());
            }
            {
              AutocastGuard autocast(device, o.precision());
              if (input_grad) {
                // R1-style losses differentiate the task loss w.r.t. the inputs: the student's inputs and a
                // separate teacher copy become leaves that require grad (token ids stay as they are; such
                // models expose differentiable embeddings in extras).
                if (batch.inputs.is_floating_point()) batch.inputs.requires_grad_(true);
                batch.teacher_inputs = batch.inputs.is_floating_point()
                                           ? batch.inputs.detach().clone().requires_grad_(true)
                                           : batch.inputs;
                batch.teacher = (*teacher_)->forward_with_input_grad(batch.teacher_inputs);
              } else if (o.self_distillation()) {
                batch.teacher = with_ema_weights(*ema, [&] {
                  torch::NoGradGuard no_grad;
                  student_->eval();
                  auto out = student_->forward(batch.inputs).detach();
                  student_->train();
                  return out;
                });
              } else if (o.teacher_cache()) batch.teacher = o.teacher_cache()->lookup(idx).to(device);
              else if (teacher_) batch.teacher = (*teacher_)->forward(batch.inputs);
              batch.student = student_->forward(batch.inputs);
              r = stage.loss().forward<LossResult>(batch);
            }  // backward runs outside autocast, as PyTorch recommends
            if (!r.total.defined() || r.total.dim() != 0) {
              throw Error(ErrorCategory::kValue,
                          fmt::format("stage '{}': the loss returned a total of shape {}, expected a scalar",
                                      stage.name(), shape_string(r.total)));
            }
            const double share = weight * double(idx.numel()) / double(examples);
            if (gradient_sync && m + 1 == micro.size()) gradient_sync->arm();
            (r.total * share).backward();
            step_result.total = step_result.total.defined() ? step_result.total + r.total.detach() * share
                                                            : r.total.detach() * share;
            for (const auto& [name, v] : r.parts) {
              auto d = v.detach() * share;
              auto it = step_result.parts.find(name);
              if (it == step_result.parts.end()) step_result.parts[name] = d;
              else it->second = it->second + d;
            }
          }

          if (gradient_sync) {
            // Each rank's part was weighted by its share of the step's examples: the sums are the step's means.
            std::vector<torch::Tensor> reported = {step_result.total.detach().clone()};
            for (auto& [name, v] : step_result.parts) reported.push_back(v.detach().clone());
            gradient_sync->finish(reported);
            step_result.total = reported[0];
            size_t k = 1;
            for (auto& [name, v] : step_result.parts) v = reported[k++];
          }
          std::vector<torch::Tensor> norms;
          for (auto& p : all_params) if (p.grad().defined()) norms.push_back(p.grad().detach().norm().to(torch::kDouble));
          const double grad_norm = norms.empty() ? 0.0 : torch::stack(norms).norm().item<double>();
          const double loss_value = step_result.total.item<double>();
          const bool finite = std::isfinite(loss_value) && std::isfinite(grad_norm);
          schedule.apply(*optimizer, state.stage_step, base_lrs);
          if (state.lr_scale != 1.0) {
            for (auto& g : optimizer->param_groups()) g.options().set_lr(g.options().get_lr() * state.lr_scale);
          }
          const double lr = optimizer->param_groups()[0].options().get_lr();
          if (finite) {
            consecutive_nonfinite = 0;
            if (o.clip_norm() > 0) torch::nn::utils::clip_grad_norm_(all_params, o.clip_norm());
            optimizer->step();
            for (auto& h : stage.hooks()) h->after_step(info);
            if (stage_ema) stage_ema->update(*student_);
          } else {
            ++state.nonfinite_steps;
            ++consecutive_nonfinite;
            const std::string what =
                fmt::format("non-finite {} at step {} (stage '{}', step {}/{}): loss {}, gradient norm {} ({})",
                            std::isfinite(loss_value) ? "gradient" : "loss", state.global_step + 1, stage.name(),
                            state.stage_step + 1, total, loss_value, grad_norm, describe_parts(step_result));
            const auto last = ckpt ? ckpt->latest() : std::nullopt;
            const std::string where = last ? fmt::format("the newest checkpoint is {}", *last)
                                           : std::string("no checkpoint has been written");
            if (o.nonfinite() == NonFinitePolicy::kStop) {
              throw Error(ErrorCategory::kValue,
                          fmt::format("{}; stopping (nonfinite policy 'stop'; the update was not applied; {}). Lower "
                                      "the learning rate, or choose the 'skip', 'lower_lr' or 'rollback' policy",
                                      what, where));
            }
            if (consecutive_nonfinite >= o.max_consecutive_nonfinite()) {
              throw Error(ErrorCategory::kValue,
                          fmt::format("{}; {} steps in a row were non-finite, stopping (policy '{}'; {}). Check the "
                                      "data and lower the learning rate",
                                      what, consecutive_nonfinite, policy_name(o.nonfinite()), where));
            }
            optimizer->zero_grad();
            if (o.nonfinite() == NonFinitePolicy::kRollback && last) {
              spdlog::warn("{}: rolling back", what);
              throw Rollback{};
            }
            if (o.nonfinite() != NonFinitePolicy::kSkipStep) state.lr_scale *= o.lr_backoff();
            spdlog::warn("{}: update skipped{}", what,
                         o.nonfinite() == NonFinitePolicy::kSkipStep
                             ? std::string()
                             : fmt::format(", learning rates now x{:.4g}", state.lr_scale));
          }
          ++state.stage_step;
          ++state.global_step;

          StepReport report;
          report.step = info;
          report.loss = step_result;
          report.lr = lr;
          report.grad_norm = grad_norm;
          report.samples_per_s = examples / std::max(1e-9, std::chrono::duration<double>(Clock::now() - start).count());
          report.skipped_nonfinite = !finite;
          report.nonfinite_total = state.nonfinite_steps;
          report.communication_s = group ? group->communication_seconds() - communication_before : 0.0;
          for (auto& cb : callbacks) cb->on_step_end(report);

          const bool stage_done = state.stage_step == total;
          if (stage_done) {
            // Before the stage-end checkpoint, so a resume never redoes what the hook finishes (LoRA's merge).
            for (auto& h : stage.hooks()) h->on_stage_end(*student_, stage);
          }
          // A stop during a stage's last step comes after the stage's end (evaluation, callbacks).
          const int stop_signal = stage_done ? 0 : stop_requested();
          if (ckpt && is_main &&
              (stage_done || stop_signal || (o.checkpoint_every() > 0 && state.global_step % o.checkpoint_every() == 0))) {
            // A finished stage is saved as the start of the next one, so a resume never repeats it.
            TrainingState saved = state;
            saved.config_fingerprint = o.fingerprint();
            if (stage_done) {
              saved.stage_index = si + 1;
              saved.stage_step = saved.epoch = saved.batch_in_epoch = 0;
            }
            const auto path =
                ckpt->save(saved, {student_.get(), all_losses.get(), stage_done ? nullptr : optimizer.get(), ema.get()});
            if (stop_signal) spdlog::info("stop requested (signal {}): checkpoint {} written", stop_signal, path);
          }
          const bool eval_now = can_eval &&
                                (stage_done || (stage.eval_every() > 0 && state.stage_step % stage.eval_every() == 0));
          if (eval_now) {
            sync_hooks();  // weights as the optimizer just left them
            for (auto& h : stage.hooks()) h->on_eval_begin();
            auto result = ema && o.eval_on_ema()
                              ? with_ema_weights(*ema, [&] { return evaluate(*validation, stage.name(), state.global_step); })
                              : evaluate(*validation, stage.name(), state.global_step);
            for (auto& h : stage.hooks()) h->on_eval_end();
            if (!result.metrics.empty()) {
              for (auto& cb : callbacks) cb->on_eval(result);
              summary.evaluations.push_back(result);
            }
          }
          if (stop_signal) return finish(stop_signal);
        }
        info.global_step = state.global_step;
        info.stage_step = state.stage_step;
        info.progress = 1.0;
        for (auto& cb : callbacks) cb->on_stage_end(stage, info);
        // The stage-end checkpoint holds everything up to here.
        if (si + 1 < static_cast<int64_t>(stages_.size())) {
          if (const int stop_signal = stop_requested()) return finish(stop_signal);
        }
      }
    } catch (const Rollback&) {
      restore = true;
      continue;
    }
    break;
  }
  return finish(0);
}

}  // namespace kd
