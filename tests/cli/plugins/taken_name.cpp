// A plugin whose loss takes a built-in's name: kd-train must refuse it (exit 2, naming the file and the name),
// not end during the library's static initialisation (tests/cli/custom_task.py).
#include <kd/kd.h>
#include <kd/losses/registry.h>

KD_REGISTER_LOSS("temperature_kl", [](const kd::LossSpec&) { return kd::HardLabelCE(); });
