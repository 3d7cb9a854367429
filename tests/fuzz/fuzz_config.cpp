// libFuzzer target: kd-train's config loader. An input is one config layer (a --config file's text):
// it is parsed, validated, merged over the defaults of the task it names and turned into the typed run
// settings, stages and models, or rejected with kd::Error naming the problem; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "config.h"
#include "kd/core/error.h"
#include "run_config.h"
#include "task.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto layer = kd::app::parse_config_text(text, "fuzz input");
    const std::string task = kd::app::task_named_in(layer, "fuzz input");
    nlohmann::json config = kd::app::task_defaults(task.empty() ? "fashion_mnist" : task);
    config.merge_patch(layer);
    kd::app::validate_config(config, "fuzz input");
    const auto run = kd::app::parse_run_config(config);  // typed: refusals are kd::Error, nothing else
    // The student the config names: options a model refuses are kd::Error (kConfig) too. Sizes are capped:
    // the fuzzer looks for crashes, not for big allocations.
    const auto& student = config["student"];
    bool small = true;
    for (const auto& [key, cap] : {std::pair<const char*, int64_t>{"d_model", 64}, {"width1", 64}, {"width2", 64},
                                   {"hidden", 1024}, {"layers", 8}, {"ffn", 512}}) {
      small = small && student.value(key, int64_t{0}) <= cap;
    }
    if (small) run.task->make_student(run, false);
  } catch (const kd::Error&) {
  }
  return 0;
}
