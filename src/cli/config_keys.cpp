#include "config_keys.h"

#include <fmt/format.h>

namespace kd::app {

std::string Range::to_string() const { return fmt::format("{}{}, {}]", lo_open ? "(" : "[", lo, hi); }

namespace {

constexpr double kMaxSeed = 9.007199254740992e15;  // 2^53: a seed a JSON number holds exactly
constexpr double kMaxSteps = 1099511627776.0;      // 2^40: epochs x steps per epoch cannot overflow

// The sections, and what the data and the models are.
std::map<std::string, KeyInfo> data_and_model_keys() {
  return {
      {"task", {"the task: its data, teacher and student architectures, metrics and defaults"}},
      {"out", {"the run folder: models, checkpoints, metrics.jsonl, summary.json, TensorBoard events"}},

      {"data", {"the task's data: where it is, how much of it, how it is split"}},
      {"teacher", {"the teacher: trained here, loaded from a file, cached, an ensemble, or the student's average"}},
      {"teacher.cache", {"the teacher cache: the teacher's outputs stored once, read every later epoch"}},
      {"student", {"the student's architecture and size"}},
      {"evaluation", {"what is measured after training besides the task's scores"}},
      {"generate", {"the samples a language model prints before and after training"}},
      {"lora", {"LoRA adapters, for stages that list \"lora\" in their hooks (kd::lora::Options)"}},
      {"qat", {"quantization-aware training, int8, for stages that list \"qat\" (kd::qat::Options)"}},
      {"prune", {"magnitude pruning, for stages that list \"prune\" (kd::prune::Options)"}},
      {"train", {"optimisation shared by the teacher and every stage, logging, checkpoints, devices"}},
      {"data.root",
       {"where the data set is (fashion_mnist: the IDX files; spam, byte_lm: \"\" = where scripts/setup put the "
        "corpus)"}},
      {"data.limit", {"use at most this many examples of each split (0 = all)", Range{0, 1e9}}},
      {"data.validation_size", {"training images held out for validation", Range{0, 59999}}},
      {"data.split_seed", {"the seed of the train/validation(/test) split", Range{0, kMaxSeed}}},
      {"data.student_labels",
       {"the fraction of training examples whose labels the student's hard-label terms see (drawn with "
        "split_seed; the others are ignored); the teacher trains on every label",
        Range{0, 1, true}}},
      {"data.eval_limit",
       {"score at most this many validation and test examples (byte_lm: windows; 0 = all)", Range{0, 1e9}}},
      {"data.max_len", {"bytes per mail: longer ones are cut, shorter ones padded and masked", Range{1, 65536}}},
      {"data.context", {"bytes per training window; the targets are the next bytes", Range{1, 65536}}},
      {"data.train", {"the training safetensors file (tensors \"inputs\" and \"targets\"); required"}},
      {"data.validation", {"the validation safetensors file (\"\" = validation_fraction of train held out)"}},
      {"data.test", {"the test safetensors file (\"\" = the validation split)"}},
      {"data.num_classes",
       {"classes of [N] class-id targets (0 = max(train targets) + 1); [N, L] token targets are a language model",
        Range{0, 1e7}}},
      {"data.validation_fraction",
       {"the share of train held out for validation when no validation file is given", Range{0, 0.9, true}}},

      {"teacher.epochs", {"epochs of teacher training when OUT/teacher.pt is missing", Range{0, 1000}}},
      {"teacher.steps", {"optimizer steps of teacher training instead of epochs (0 = use epochs)", Range{0, 1e9}}},
      {"teacher.path",
       {"a teacher state written by `kd-train teacher` to use (\"\" = OUT/teacher.pt, trained there when "
        "missing)"}},
      {"teacher.torchscript", {"the teacher's TorchScript file, used as it is (never trained)"}},
      {"teacher.cache.enabled",
       {"run the teacher once over the training set and read its outputs from the cache afterwards"}},
      {"teacher.cache.top_k",
       {"keep only the teacher's k largest logits per example or token (0 = all)", Range{0, 1e6}}},
      {"teacher.cache.dtype", {"how the cached outputs are stored"}},
      {"teacher.cache.path",
       {"a cache built earlier to read (\"\" = OUT/teacher.cache, rebuilt when stale); it must match this "
        "teacher, data and options"}},
      {"teacher.ensemble",
       {"more teacher files distilled together with the teacher (kd::MultiTeacher): this task's teacher.pt "
        "states, TorchScript files for custom"}},
      {"teacher.ensemble_weights", {"the ensemble's mixing weights, one per teacher (empty = equal)"}},
      {"teacher.ensemble_temperature",
       {"the temperature the ensemble's soft targets are mixed at (0 = the first KL-type term's T)",
        Range{0, 100}}},
      {"teacher.self_distillation",
       {"no teacher model: the stages' teacher is the student's own moving average (needs train.ema_decay > 0)"}},
      {"teacher.layers", {"the teacher transformer's blocks", Range{1, 1024}}},
      {"teacher.d_model", {"the teacher's model width", Range{1, 65536}}},
      {"teacher.heads", {"the teacher's attention heads per block", Range{1, 1024}}},
      {"teacher.ffn", {"the teacher's feed-forward width (0 = 4 x d_model)", Range{0, 1 << 20}}},
      {"teacher.dropout", {"the teacher's dropout while it trains", Range{0, 0.999}}},

      {"student.model", {"the student's architecture (custom: \"\" when student.torchscript is given)"}},
      {"student.torchscript", {"the student's TorchScript file, trained in place and written as OUT/student.ts.pt"}},
      {"student.width1", {"channels of the first convolution block", Range{1, 4096}}},
      {"student.width2", {"channels of the second convolution block", Range{1, 4096}}},
      {"student.hidden", {"the hidden width of model \"cnn\"", Range{1, 65536}}},
      {"student.layers", {"the student transformer's blocks", Range{1, 1024}}},
      {"student.d_model", {"the student's model width", Range{1, 65536}}},
      {"student.heads", {"the student's attention heads per block", Range{1, 1024}}},
      {"student.ffn", {"the student's feed-forward width (0 = 4 x d_model)", Range{0, 1 << 20}}},
      {"student.dropout", {"the student's dropout while it trains", Range{0, 0.999}}},
      {"student.vocab", {"token ids the student embeds; must exceed the largest id in the data", Range{1, 1 << 24}}},
      {"student.attention",
       {"\"softmax\", or \"linear\" (a kernel feature map, O(L); attention terms then see its surrogate)"}},
      {"student.dynamic_depth",
       {"a batch whose longest mail is at most depth_thresholds[i] bytes runs depth_layers[i] blocks"}},
      {"student.depth_thresholds", {"dynamic depth: the length thresholds in bytes, ascending"}},
      {"student.depth_layers", {"dynamic depth: the blocks run at each threshold"}},

  };
}

// The stages, what is measured and sampled, and the hooks the stages list.
std::map<std::string, KeyInfo> stage_and_hook_keys() {
  return {
      {"stages", {"the stages of distillation, run in order on the student"}},
      {"stages[].name", {"the stage's name in logs, metrics and checkpoints"}},
      {"stages[].epochs", {"epochs of the stage (when steps is 0)", Range{0, 1e6}}},
      {"stages[].steps", {"optimizer steps of the stage (> 0: wins over epochs)", Range{0, kMaxSteps}}},
      {"stages[].lr", {"the stage's peak learning rate", Range{0, 10, true}}},
      {"stages[].loss_lr",
       {"the learning rate of the losses' own parameters (projections, learnt weights); -1 = lr",
        Range{0, 10, true}}},
      {"stages[].trainable", {"regexes over parameter names the stage trains (empty: all)"}},
      {"stages[].eval_every", {"score the validation split every this many steps (0 = at the stage's end)",
                               Range{0, kMaxSteps}}},
      {"stages[].losses",
       {"the stage's loss terms: {\"type\", \"name\", \"weight\" (a number or {\"schedule\", \"start\", "
        "\"end\"}), options}; `kd-train list` shows each type's options"}},
      {"stages[].hooks", {"hooks active in the stage: \"lora\", \"qat\", \"prune\" (their sections' settings)"}},
      {"stages[].param_groups",
       {"[{\"patterns\": [regex...], \"lr\", \"weight_decay\"}]: own learning rates for matching parameters"}},
      {"stages[].ema", {"update the moving average of the student in this stage (when train.ema_decay > 0)"}},
      {"stages[].qat", {"this stage's QAT settings (kd::qat::StageOptions); needs \"qat\" in hooks"}},
      {"stages[].prune", {"this stage's sparsity schedule {\"start\", \"end\"}; needs \"prune\" in hooks"}},
      {"stages[].weighting",
       {"how the terms' weights move: {\"policy\": ..., options}; `kd-train list` shows the policies"}},

      {"evaluation.fgsm_epsilon",
       {"accuracy under an FGSM attack of this L-infinity step against each model (0 = not measured)",
        Range{0, 10}}},
      {"evaluation.ece_bins", {"bins of the expected calibration error", Range{1, 1000}}},
      {"evaluation.best_metric",
       {"the validation score that picks OUT/student.best.pt (\"\" = accuracy, or bits per byte for language "
        "models)"}},

      {"generate.prompt", {"the text samples start from, before and after training"}},
      {"generate.tokens", {"bytes generated per sample", Range{0, 1e6}}},
      {"generate.temperature", {"the sampling temperature (0 = greedy)", Range{0, 100}}},
      {"generate.top_k", {"sample among the k likeliest bytes (0 = all)", Range{0, 1e6}}},
      {"generate.seed", {"the sampling seed", Range{0, kMaxSeed}}},

      {"lora.rank", {"the rank of each LoRA adapter (kd::lora::Options)", Range{1, 4096}}},
      {"lora.alpha", {"LoRA's scale numerator: the update is scaled by alpha / rank", Range{0, 1e6, true}}},
      {"lora.rslora", {"scale by alpha / sqrt(rank) instead (rank-stabilised LoRA)"}},
      {"lora.dropout", {"dropout on the adapter's input", Range{0, 0.999}}},
      {"lora.targets", {"the Linear layers that get adapters: exact names, trailing dotted parts or \"re:<regex>\" (empty: every Linear)"}},
      {"lora.merge_at_end", {"fold the adapters into the weights when the stage ends"}},

      {"qat.per_channel", {"one weight scale per output channel instead of per tensor"}},
      {"qat.narrow_range", {"weights in [-127, 127] instead of [-128, 127]"}},
      {"qat.weight_observer", {"how the weights' range is tracked"}},
      {"qat.activations", {"fake-quantize activations too (models that have activation points)"}},
      {"qat.activation_observer", {"how the activations' range is tracked"}},
      {"qat.averaging_constant", {"the moving-average observers' update rate", Range{0, 1, true}}},
      {"qat.exclude", {"regexes over module names left in float"}},
      {"qat.freeze_observers_at", {"the share of each QAT stage after which the ranges stay fixed", Range{0, 1}}},

      {"prune.granularity", {"what magnitude pruning removes: single weights, output channels or attention heads"}},
      {"prune.targets", {"the layers pruned: exact names, trailing dotted parts or \"re:<regex>\" (empty: every Linear and convolution; head: every attention module)"}},
      {"prune.exclude", {"layers never pruned (the same patterns), e.g. the classifier head"}},
      {"prune.start", {"the sparsity at the start of each pruning stage", Range{0, 0.999}}},
      {"prune.end", {"the sparsity at its end (cubic in between)", Range{0, 0.999}}},
      {"prune.update_every", {"recompute the masks every this many steps", Range{1, 1e6}}},

  };
}

// The train section.
std::map<std::string, KeyInfo> train_keys() {
  return {
      {"train.batch_size", {"examples per optimizer step (before accumulation)", Range{1, 65536}}},
      {"train.lr", {"the teacher's learning rate (each stage has its own \"lr\")", Range{0, 10, true}}},
      {"train.weight_decay", {"decoupled weight decay (AdamW) or L2 (SGD)", Range{0, 10}}},
      {"train.seed", {"the seed of initialisation, batch order and augmentation", Range{0, kMaxSeed}}},
      {"train.threads", {"intra-op threads (0 = all cores)", Range{0, 1024}}},
      {"train.device", {"cpu, cuda, cuda:N or auto"}},
      {"train.log_every", {"a progress line every this many steps (0 = none)", Range{0, 1e9}}},
      {"train.tensorboard",
       {"TensorBoard events: \"\" = OUT/tensorboard, \"none\" = not written, else that folder"}},
      {"train.checkpoint_every", {"write a checkpoint every this many steps (0 = at stage ends)", Range{0, 1e9}}},
      {"train.keep_last", {"checkpoints kept", Range{1, 1000}}},
      {"train.precision", {"the forward's precision (autocast)"}},
      {"train.optimizer", {"the optimizer of every stage"}},
      {"train.momentum", {"SGD's momentum", Range{0, 1}}},
      {"train.nesterov", {"SGD with Nesterov momentum"}},
      {"train.accumulation", {"micro-batches per optimizer step", Range{1, 65536}}},
      {"train.clip_norm", {"clip the gradients' global norm to this (0 = no clipping)", Range{0, 1e6}}},
      {"train.warmup_steps", {"linear warm-up steps at the start of each stage, then cosine decay", Range{0, 1e9}}},
      {"train.min_lr_factor", {"where the cosine decay ends, as a share of the peak", Range{0, 1}}},
      {"train.ema_decay", {"keep a moving average of the student's weights (0 = none)", Range{0, 0.999999999}}},
      {"train.eval_on_ema", {"score the moving average instead of the trained weights"}},
      {"train.hard_example_mix",
       {"the share of each batch drawn from the examples the teacher finds hardest", Range{0, 1}}},
      {"train.hardness", {"how hard examples are ranked"}},
      {"train.augment",
       {"\"shift_flip\", \"cutmix\" (images) or \"token_mix\" (spam); mixing ones make soft targets, and all refuse "
        "the teacher cache"}},
      {"train.mix_alpha", {"the mixing share lambda ~ Beta(mix_alpha, mix_alpha)", Range{0, 1e3, true}}},
      {"train.mix_probability", {"the chance a batch is mixed", Range{0, 1}}},
      {"train.adversarial_epsilon",
       {"> 0: replace adversarial_ratio of each batch by examples made against the student (FGSM for images, "
        "HotFlip for tokens)",
        Range{0, 10}}},
      {"train.adversarial_ratio", {"the share of each batch made adversarial", Range{0, 1}}},
      {"train.nonfinite",
       {"on a NaN/Inf loss or gradient: skip the update, lower_lr (skip and x lr_backoff), rollback to the newest "
        "checkpoint, or stop"}},
      {"train.lr_backoff", {"the learning rate's factor after a non-finite step (lower_lr, rollback)",
                            Range{0, 1, true}}},
      {"train.max_consecutive_nonfinite", {"non-finite steps in a row that always stop the run", Range{1, 1e6}}},
  };
}

}  // namespace

const std::map<std::string, KeyInfo>& config_keys() {
  static const std::map<std::string, KeyInfo> keys = [] {
    auto all = data_and_model_keys();
    for (auto part : {stage_and_hook_keys(), train_keys()}) all.insert(part.begin(), part.end());
    return all;
  }();
  return keys;
}

std::optional<Range> key_range(const std::string& path) {
  const auto it = config_keys().find(path);
  return it == config_keys().end() ? std::nullopt : it->second.range;
}

}  // namespace kd::app
