#include "kd/train/staged_trainer.h"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/train/metric_names.h"
#include "kd/train/metrics.h"
#include "fit_run.h"

namespace kd {
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
    r.metrics[metric::kAccuracy] = metrics.accuracy();
    r.metrics[metric::kMacroF1] = metrics.macro_f1();
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
    r.metrics[metric::kNll] = m.nll();
    r.metrics[metric::kPerplexity] = m.perplexity();
    r.metrics[metric::kBitsPerByte] = m.bits_per_byte();
    r.metrics[metric::kTokenAccuracy] = m.token_accuracy();
  }
  return r;
}

void StagedTrainer::check_data(const data::TensorDataset& train) const {
  const auto& o = options_;
  if (train.size() == 0) throw Error(ErrorCategory::kValue, "StagedTrainer::fit: the training set is empty");
  if (o.teacher_cache() && o.teacher_cache()->size() != train.size()) {
    throw Error(ErrorCategory::kState,
                fmt::format("the teacher cache holds {} examples but the training set has {}; build the cache over "
                            "this training set",
                            o.teacher_cache()->size(), train.size()));
  }
}

void StagedTrainer::check(const data::TensorDataset& train, const data::TensorDataset* validation) {
  check_data(train);
  detail::FitRun(*this, train, validation).check();
}

TrainSummary StagedTrainer::fit(const data::TensorDataset& train, const data::TensorDataset* validation, bool resume) {
  check_data(train);
  if (resume && options_.checkpoint_dir().empty()) {
    throw Error(ErrorCategory::kState, "resume asked for, but no checkpoint_dir is set");
  }
  return detail::FitRun(*this, train, validation).fit(resume);
}

}  // namespace kd
