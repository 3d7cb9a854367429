#pragma once
/// \file
/// Graceful stop: SIGINT / SIGTERM end training after the current step, with a checkpoint.

#include <csignal>

namespace kd {

/// A process-wide stop request that kd::StagedTrainer checks after every optimizer step. When it
/// is set the trainer finishes the step (and an evaluation due at it), writes a checkpoint (if it
/// has a checkpoint_dir), stops, and returns a TrainSummary whose `stopped_by_signal` names the
/// signal; `fit(..., resume = true)` later continues exactly from there.
///
/// A library never takes signals on its own: a program opts in, best with a `Scope` around the
/// training, so that outside it Ctrl-C keeps its usual meaning. While installed, the first SIGINT
/// or SIGTERM sets the request and puts the default action back for both signals, so a second one
/// (of either kind) kills at once — the way out if a step hangs. Once the stop is handled, a
/// program ends with `exit_by(signal)`: it re-raises the signal with the default action, so the
/// shell reports 130 (SIGINT) or 143 (SIGTERM) and a calling script sees the interruption.
///
/// Example:
/// ```
/// kd::TrainSummary summary;
/// {
///   kd::StopSignal::Scope stop_on_signal;
///   summary = trainer.fit(train, &val, /*resume=*/true);
/// }
/// if (summary.stopped_by_signal) kd::StopSignal::exit_by(summary.stopped_by_signal);
/// ```
class StopSignal {
 public:
  /// Installs the handlers for its lifetime and restores the previous ones after.
  class Scope {
   public:
    Scope();
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    struct sigaction previous_int_ {}, previous_term_ {};
  };

  /// Installs the handlers for SIGINT and SIGTERM until the program ends (or until a Scope ends).
  static void install();
  /// The signal that asked to stop, or 0.
  static int requested();
  /// Asks to stop as if `signal` had arrived (for tests, or a program's own stop button).
  static void request(int signal);
  /// Clears the request (after a stop was handled, before training again in the same process).
  static void reset();
  /// 128 + signal: what a shell reports for a process that `signal` ended.
  static constexpr int exit_code(int signal) { return 128 + signal; }
  /// Ends the process by `signal` with its default action; returns exit_code(signal) only if the
  /// signal is blocked or ignored by the caller's mask, so `return exit_by(s);` from main is safe.
  static int exit_by(int signal);
};

}  // namespace kd
