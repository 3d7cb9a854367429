#pragma once
/// \file
/// Graceful stop: SIGINT / SIGTERM end training after the current step, with a checkpoint.

namespace kd {

/// A process-wide stop request that kd::StagedTrainer checks after every optimizer step. When it
/// is set the trainer writes a checkpoint (if it has a checkpoint_dir), stops, and returns a
/// TrainSummary whose `stopped_by_signal` names the signal; `fit(..., resume = true)` later
/// continues exactly from there.
///
/// A library never takes signals on its own: a program opts in with install(), which makes the
/// first SIGINT or SIGTERM set the request; the handler then reverts to the default, so a second
/// Ctrl-C kills at once. By convention such a program exits with exit_code(signal) = 128 + signal
/// (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by it.
///
/// Example:
/// ```
/// kd::StopSignal::install();
/// auto summary = trainer.fit(train, &val, /*resume=*/true);
/// if (summary.stopped_by_signal) return kd::StopSignal::exit_code(summary.stopped_by_signal);
/// ```
class StopSignal {
 public:
  /// Installs handlers for SIGINT and SIGTERM (each reset to the default once it fires).
  static void install();
  /// The signal that asked to stop, or 0.
  static int requested();
  /// Asks to stop as if `signal` had arrived (for tests, or a program's own stop button).
  static void request(int signal);
  /// Clears the request (after a stop was handled, before training again in the same process).
  static void reset();
  static constexpr int exit_code(int signal) { return 128 + signal; }
};

}  // namespace kd
