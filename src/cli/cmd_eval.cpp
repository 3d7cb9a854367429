// kd-train eval: test-set scores of a saved teacher or student.
#include <fmt/format.h>

#include "commands.h"
#include "run_context.h"

namespace kd::app {

int run_eval(const RunConfig& config, const std::string& which, const std::string& model_file, bool as_json) {
  const Task& task = *config.task;
  const torch::Device device = set_up_process(config);
  const fs::path out(config.out);
  const fs::path path = model_file.empty() ? out / (which + ".pt") : fs::path(model_file);
  // An int8 file (kd-train distill with a "qat" stage, or kd-train export --format int8) loads through
  // kd::qat::load_int8.
  const bool int8 = is_int8_file(path);
  if (int8 && which == "teacher") {
    throw Error(ErrorCategory::kConfig, fmt::format("'{}' is an int8 student file; use --which student", path.string()));
  }
  auto loaded = load_model_file(config, which, path, device);
  if (loaded.int8_report && !as_json) fmt::print("{}\n", *loaded.int8_report);
  const Splits data = load_splits(config, device);
  const auto m = task.evaluate(*loaded.model, data.test);
  std::vector<double> f1;
  if (task.num_classes() > 0) {
    f1 = evaluate_classifier(*loaded.model, data.test, task.num_classes()).per_class_f1();
  }
  if (as_json) {
    json report = {{"model", loaded.name},
                   {"file", path.string()},
                   {"parameters", parameter_count(*loaded.model)},
                   {"test_examples", data.test.size()},
                   {"scores", m.to_json()}};
    if (m.ece) report["expected_calibration_error"] = *m.ece;
    if (!f1.empty()) report["per_class_f1"] = f1;
    fmt::print("{}\n", report.dump());
    return 0;
  }
  fmt::print("\n{} from {}: {} parameters, test {} ({} examples)\n", loaded.name, path.string(),
             parameter_count(*loaded.model), m.to_string(), data.test.size());
  for (size_t c = 0; c < f1.size(); ++c) fmt::print("  class {}: F1 {:.4f}\n", c, f1[c]);
  return 0;
}

}  // namespace kd::app
