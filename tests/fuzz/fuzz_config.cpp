// libFuzzer target: kd-train's config loader. An input is one config layer (a --config file's text):
// it is parsed, validated, merged over the defaults and turned into the typed run settings and stages,
// or rejected with kd::Error naming the problem; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "config.h"
#include "kd/core/error.h"
#include "run_context.h"
#include "stage_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    nlohmann::json config = kd::app::distill_defaults();
    config.merge_patch(kd::app::parse_config_text(text, "fuzz input"));
    kd::app::validate_config(config, "fuzz input");
    const kd::app::RunArgs args(config);  // typed settings: must not throw once validated
    (void)args;
    kd::app::stages_from_json(config["stages"], "fuzz input");
  } catch (const kd::Error&) {
  }
  return 0;
}
