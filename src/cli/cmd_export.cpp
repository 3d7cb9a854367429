// kd-train export: a trained model as a TorchScript file (for Python, C++ or any TorchScript runtime)
// or as a compact int8 file (post-training calibration when the model was trained in float).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/script.h>

#include "kd/core/script_export.h"
#include "kd/prune/compact.h"
#include "commands.h"
#include "hook_config.h"
#include "run_context.h"

namespace kd::app {
namespace {

// Copies every parameter and buffer of `from` into the tensor of the same name in `to` (which may have more:
// activation quantization placeholders). kd::Error naming the first tensor `to` lacks or shapes differently.
void copy_state(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto params = to.named_parameters(), buffers = to.named_buffers();
  auto copy = [&](const std::string& name, const torch::Tensor& src) {
    torch::Tensor* dst = params.find(name);
    if (!dst) dst = buffers.find(name);
    if (!dst || !dst->defined() || dst->sizes() != src.sizes()) {
      throw Error(ErrorCategory::kShape, fmt::format("cannot copy '{}' {} into the quantizable student ({})", name,
                                                     shape_string(src), dst && dst->defined() ? shape_string(*dst) : "absent"));
    }
    dst->copy_(src);
  };
  for (const auto& p : from.named_parameters()) copy(p.key(), p.value());
  for (const auto& b : from.named_buffers()) {
    if (b.value().defined()) copy(b.key(), b.value());
  }
}

// Largest |a − b| over two models' logits on the same inputs (the exported file against the C++ model).
double max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Fastest milliseconds of one forward of each model on `inputs`, over rounds that alternate the two: on a
// shared machine the fastest round is the one least disturbed, and alternating exposes both to the same spells.
std::pair<double, double> fastest_forward_ms(Model& a, Model& b, const torch::Tensor& inputs, int rounds = 21) {
  torch::NoGradGuard no_grad;
  auto time_once = [&](Model& m) {
    const auto t0 = std::chrono::steady_clock::now();
    m.forward(inputs);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  time_once(a);  // warm-up: allocator and thread pool
  time_once(b);
  double ta = std::numeric_limits<double>::infinity(), tb = ta;
  for (int r = 0; r < rounds; ++r) {
    ta = std::min(ta, time_once(a));
    tb = std::min(tb, time_once(b));
  }
  return {ta, tb};
}

// The file to export and the file to write, after refusing flag combinations and paths that cannot work;
// creates the folder `to` goes into.
std::pair<fs::path, fs::path> checked_paths(const fs::path& out, const ExportArgs& e) {
  const fs::path from = e.model_file.empty() ? out / (e.which + ".pt") : fs::path(e.model_file);
  if (e.format == "int8" && e.which != "student") {
    throw Error(ErrorCategory::kConfig, "--format int8 exports students only (kd-train eval reads int8 students); use "
                                        "--which student, or --format torchscript for the teacher");
  }
  if (e.compact && e.format != "torchscript") {
    throw Error(ErrorCategory::kConfig, "--compact writes a TorchScript file; drop --format int8 (or --compact)");
  }
  if (e.format == "int8" && is_int8_file(from)) {
    throw Error(ErrorCategory::kConfig, fmt::format("'{}' is an int8 file already; export it with --format torchscript, "
                                                    "or give the float student (student.pt) with --model",
                                                    from.string()));
  }
  const std::string default_name = e.format == "int8" ? e.which + ".int8.pt" : e.which + ".ts.pt";
  const fs::path to = e.to.empty() ? out / default_name : fs::path(e.to);
  if (fs::absolute(to) == fs::absolute(from)) {
    throw Error(ErrorCategory::kConfig, fmt::format("--to '{}' is the model being exported; choose another file",
                                                    to.string()));
  }
  if (!to.parent_path().empty()) ensure_output_folder(to.parent_path());
  return {from, to};
}

// The model in `from`, in eval mode.
LoadedModel load_for_export(const RunConfig& config, const ExportArgs& e, const fs::path& from,
                            const torch::Device& device) {
  // A student trained with a QAT stage was saved with its activation quantization points.
  const bool qat_state = e.which == "student" && !is_int8_file(from) && config.uses_hook("qat");
  LoadedModel loaded = [&] {
    if (!qat_state) return load_model_file(config, e.which, from, device);
    LoadedModel m;
    m.model = make_student_model(config, /*activation_quant=*/true, &m.name);
    m.model->to(device);
    load_module(*m.model, from, device, "student");
    return m;
  }();
  loaded.model->eval();
  return loaded;
}

// What every export variant works from.
struct ExportJob {
  const RunConfig& config;
  const ExportArgs& args;
  torch::Device device;
  fs::path from, to;
  LoadedModel loaded;
  Splits data;
  torch::Tensor probe;  // the first (up to 8) test inputs the exported file is compared on
};

// --compact: prunes job.loaded in place and prints how it compares with the dense model in `from`.
void compact_and_compare(const ExportJob& job) {
  // The dense model stays loaded beside the compacted one: outputs, file bytes and speed side by side.
  LoadedModel dense = load_model_file(job.config, job.args.which, job.from, job.device);
  dense.model->eval();
  const auto report = prune::compact(*job.loaded.model);
  if (!report.changed()) {
    spdlog::warn("--compact: nothing to remove from {}: no attention head or feed-forward channel of a transformer "
                 "block is all zero (prune with granularity \"head\", or \"channel\" with targets [\"fc1\"]; "
                 "convolutions are not compacted)",
                 job.loaded.name);
  }
  torch::NoGradGuard no_grad;
  const double diff =
      max_difference(job.loaded.model->forward(job.probe).logits, dense.model->forward(job.probe).logits);
  const fs::path dense_file = job.to.string() + ".dense.tmp";
  const auto example = job.config.task->example_input(job.config).to(job.device);
  const auto dense_bytes = export_torchscript(*dense.model, example, dense_file.string(),
                                              ScriptExportOptions().with_layers(job.args.with_layers));
  fs::remove(dense_file);
  const auto timing = job.data.test.inputs.slice(0, 0, std::min<int64_t>(64, job.data.test.size()));
  const auto [dense_ms, compact_ms] = fastest_forward_ms(*dense.model, *job.loaded.model, timing);
  fmt::print("{}\n  largest logit difference compact vs dense on {} test inputs {:.3g}; forward of {} test inputs "
             "(fastest of 21 alternating rounds, {} thread(s)): dense {:.2f} ms, compact {:.2f} ms ({:.2f}x); "
             "TorchScript dense {} bytes\n",
             report.to_string(), job.probe.size(0), diff, timing.size(0), torch::get_num_threads(), dense_ms,
             compact_ms, dense_ms / compact_ms, dense_bytes);
}

// Writes the TorchScript file, reads it back and prints how closely it matches the loaded model.
int write_torchscript(const ExportJob& job) {
  if (job.args.which == "student" && job.config.student.dynamic_depth) {
    spdlog::warn("the student has dynamic depth; a trace records the depth of one input length ({} tokens: {}), "
                 "so the TorchScript file runs that depth for every input",
                 job.config.task->example_input(job.config).size(1), "the full length");
  }
  const auto example = job.config.task->example_input(job.config).to(job.device);
  const auto bytes = export_torchscript(*job.loaded.model, example, job.to.string(),
                                        ScriptExportOptions().with_layers(job.args.with_layers));
  // Read back as any user would, and compare on test inputs.
  auto script = torch::jit::load(job.to.string(), job.device);
  script.eval();
  torch::NoGradGuard no_grad;
  const auto want = job.loaded.model->forward(job.probe).logits;
  const auto got_value = script.forward({job.probe});
  const auto got = got_value.isTuple() ? got_value.toTuple()->elements()[0].toTensor() : got_value.toTensor();
  fmt::print("{} ({} parameters) -> {}: TorchScript, {} bytes{}; read back with torch::jit::load, largest logit "
             "difference on {} test inputs {:.3g}\n",
             job.loaded.name, parameter_count(*job.loaded.model), job.to.string(), bytes,
             job.args.with_layers ? ", forward returns (logits, hidden_states, attentions)"
                                  : ", forward returns the logits",
             job.probe.size(0), max_difference(got, want));
  fmt::print("  Python: m = torch.jit.load(\"{}\"); logits = m(x)   C++: torch::jit::load, or kd::ScriptModel::load\n",
             job.to.string());
  return 0;
}

// int8: weights (and activation points, for models that have them) quantized after calibration on
// training batches with the observers the config's "qat" section names; fake quantization off meanwhile.
// The written file is loaded into a fresh student and scored on the test split beside the float model.
int write_int8(const ExportJob& job) {
  auto student = make_student_model(job.config, /*activation_quant=*/true);
  student->to(job.device);
  copy_state(*job.loaded.model, *student);
  auto q = qat::prepare(student, job.config.hooks.qat);
  student->eval();
  q->enable_fake_quant(false);
  q->enable_observers(true);
  const int64_t n = job.data.train.size(), batches = std::max<int64_t>(1, job.args.calibration_batches);
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(job.config.train.batch_size, n));
  {
    torch::NoGradGuard no_grad;
    for (int64_t b = 0; b < batches && b * batch < n; ++b) {
      q->refresh();
      student->forward(job.data.train.inputs.slice(0, b * batch, std::min(n, (b + 1) * batch)));
    }
  }
  q->freeze_observers();
  q->enable_fake_quant(true);
  q->refresh();
  const auto written = qat::export_int8(*student, *q, job.to.string());
  auto fresh = make_student_model(job.config, /*activation_quant=*/true);
  fresh->to(job.device);
  qat::load_int8(*fresh, job.to.string());
  const auto float_scores = job.config.task->evaluate(*job.loaded.model, job.data.test);
  const auto int8_scores = job.config.task->evaluate(*fresh, job.data.test);
  fmt::print("{} -> {}: {}\n  {}; calibrated on {} training batch(es) of {}\n", job.loaded.name, job.to.string(),
             written.to_string(), q->summary(), std::min(batches, (n + batch - 1) / batch), batch);
  fmt::print("  test ({} examples): float {}\n                       int8 file {}\n", job.data.test.size(),
             float_scores.to_string(), int8_scores.to_string());
  return 0;
}

}  // namespace

int run_export(const RunConfig& config, const ExportArgs& e) {
  const torch::Device device = set_up_process(config);
  const auto [from, to] = checked_paths(fs::path(config.out), e);
  LoadedModel loaded = load_for_export(config, e, from, device);
  Splits data = load_splits(config, device);
  const auto probe = data.test.inputs.slice(0, 0, std::min<int64_t>(8, data.test.size()));
  const ExportJob job{config, e, device, from, to, std::move(loaded), std::move(data), probe};
  if (e.format == "torchscript" && e.compact) compact_and_compare(job);
  if (e.format == "torchscript") return write_torchscript(job);
  return write_int8(job);
}

}  // namespace kd::app
