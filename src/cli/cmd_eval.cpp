// kd-train eval: test-set metrics of a saved teacher or student.
#include <fmt/format.h>

#include "commands.h"
#include "run_context.h"

namespace kd::app {

int run_eval(const json& config, const std::string& which, const std::string& model_file) {
  const RunArgs a(config);
  const torch::Device device = set_up_process(a);
  const fs::path out(a.out);
  const fs::path path = model_file.empty() ? out / (which + ".pt") : fs::path(model_file);
  // An int8 file (kd-train distill with a "qat" stage writes student.int8.pt) loads through kd::qat::load_int8.
  const std::string file = path.filename().string();
  const bool int8 = file.size() > 8 && file.compare(file.size() - 8, 8, ".int8.pt") == 0;
  if (int8 && which == "teacher") {
    throw Error(ErrorCategory::kConfig, fmt::format("'{}' is an int8 student file; use --which student", path.string()));
  }
  std::shared_ptr<Model> model;
  std::string name;
  if (which == "teacher") {
    model = models::CnnTeacher(models::CnnTeacherOptions()).ptr();
    name = "CnnTeacher";
  } else {
    // The architecture the config's "student" section names (with quantization points for an int8 file).
    model = make_student_model(config, int8, &name);
  }
  model->to(device);
  if (int8) {
    const auto r = qat::load_int8(*model, path.string());
    name += " (int8 file)";
    fmt::print("{}\n", r.to_string());
  } else {
    load_module(*model, path, device, which);
  }
  const Splits data = load_splits(a, device);
  const auto m = evaluate_classifier(*model, data.test, 10);
  fmt::print("\n{} from {}: {} parameters, test accuracy {:.2f}%, macro-F1 {:.4f} ({} images)\n", name, path.string(),
             parameter_count(*model), 100 * m.accuracy(), m.macro_f1(), data.test.size());
  const auto f1 = m.per_class_f1();
  for (size_t c = 0; c < f1.size(); ++c) fmt::print("  class {}: F1 {:.4f}\n", c, f1[c]);
  return 0;
}

}  // namespace kd::app
