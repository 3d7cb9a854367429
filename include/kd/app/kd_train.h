#pragma once
/// \file
/// kd-train as a function, for a program of your own that adds losses to it (link kdistill::app).
///
/// The installed `kd-train` is this function and nothing else. Losses registered in your program with
/// KD_REGISTER_LOSS are then names its configs may use, and `list` shows them:
/// ```
/// #include <kd/app/kd_train.h>
/// #include <kd/losses/registry.h>
///
/// KD_REGISTER_LOSS("my_loss", [](const kd::LossSpec& s) { return MyLoss(s.number("alpha", 0.5)); }, {"alpha"});
///
/// int main(int argc, char** argv) { return kd::app::kd_train_main(argc, argv); }
/// ```
/// (`kd-train --plugin FILE.so` loads such registrations into the installed kd-train instead, without building one.)

namespace kd::app {

/// Runs kd-train's command line (`teacher`, `distill`, `eval`, `export`, `list`, with their flags) and returns its
/// exit status: 0 done, 2 bad input, 3 an error inside LibTorch, 1 anything else, 128 + N ended by signal N.
int kd_train_main(int argc, char** argv);

}  // namespace kd::app
