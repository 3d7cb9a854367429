// kd-train teacher: train the task's teacher from scratch (no pretrained weights can be downloaded here).
#include <fmt/format.h>

#include "commands.h"
#include "run_context.h"
#include "run_lock.h"

namespace kd::app {

int run_teacher(RunConfig config, bool resume) {
  const Task& task = *config.task;
  if (!task.trains_teacher()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("task \"{}\" takes its teacher as it is from teacher.torchscript: there is no teacher to "
                            "train; run `kd-train distill`",
                            task.name()));
  }
  if (config.teacher.self_distillation) {
    throw Error(ErrorCategory::kConfig,
                "'teacher.self_distillation' is true: the student's own moving average is the teacher, so there is no "
                "teacher to train; run `kd-train distill`");
  }
  config.teacher.path.clear();  // this command trains the teacher into OUT, whatever teacher.path says
  const fs::path out(config.out);
  const auto lock = lock_run_folder(config.out);
  // The student checkpoints there were trained against the teacher.pt there: a new teacher would leave them stale.
  if (const std::string ckpt = first_checkpoint(out / "checkpoints"); !ckpt.empty()) {
    throw Error(ErrorCategory::kState,
                fmt::format("'{}' holds student checkpoints (e.g. {}) distilled from its teacher.pt; a new teacher "
                            "would leave them stale: train it into another --out and give the distillation "
                            "teacher.path, or finish or delete that run first",
                            (out / "checkpoints").string(), ckpt));
  }
  const torch::Device device = set_up_process(config);
  if (is_main_rank()) ensure_output_folder(out);  // teacher_config.json: once the trainer accepts the run
  const Splits data = load_splits(config, device);
  // Every rank decides before rank 0 moves the old teacher aside, and trains only once it has.
  const bool replace = !resume && fs::exists(out / "teacher.pt");
  const auto& group = process_group();
  if (group) group->barrier();
  if (replace && is_main_rank()) {
    // A fresh teacher replaces the old one only once it is fully trained (save_module is atomic).
    fs::rename(out / "teacher.pt", out / "teacher.previous.pt");
  }
  if (group) group->barrier();
  double seconds = 0;
  TeacherModel teacher;
  try {
    teacher = train_or_load_teacher(config, device, data, seconds, resume);
  } catch (...) {
    if (is_main_rank() && fs::exists(out / "teacher.previous.pt")) fs::rename(out / "teacher.previous.pt", out / "teacher.pt");
    throw;
  }
  if (!is_main_rank()) return 0;
  fs::remove(out / "teacher.previous.pt");
  const auto m = task.evaluate(*teacher.model, data.test);
  fmt::print("\n{}: {} parameters, test {} ({} examples), {:.0f} s\n", teacher.name, parameter_count(*teacher.model),
             m.to_string(), data.test.size(), seconds);
  fmt::print("  written: {}/teacher.pt (kd-train distill --out {} uses it)\n", config.out, config.out);
  return 0;
}

}  // namespace kd::app
