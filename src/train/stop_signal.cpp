#include "kd/train/stop_signal.h"

#include <atomic>
#include <csignal>
#include <cstdio>

namespace kd {
namespace {

// Lock-free, so reading and writing it in a signal handler is allowed.
std::atomic<int> g_requested{0};
static_assert(std::atomic<int>::is_always_lock_free, "the stop flag must be usable from a signal handler");

void set_default(int signal) {
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  sigaction(signal, &action, nullptr);
}

// Only async-signal-safe work here: an atomic store and sigaction().
extern "C" void on_stop_signal(int signal) {
  g_requested.store(signal);
  set_default(SIGINT);  // the next Ctrl-C or SIGTERM, of either kind, kills at once
  set_default(SIGTERM);
}

struct sigaction stop_action() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // interrupted reads and writes resume; the step finishes
  return action;
}

}  // namespace

StopSignal::Scope::Scope() {
  const auto action = stop_action();
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignal::Scope::~Scope() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
}

void StopSignal::install() {
  const auto action = stop_action();
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int StopSignal::requested() { return g_requested.load(); }

void StopSignal::request(int signal) { g_requested.store(signal); }

void StopSignal::reset() { g_requested.store(0); }

int StopSignal::exit_by(int signal) {
  std::fflush(stdout);
  std::fflush(stderr);
  set_default(signal);
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, signal);
  sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
  std::raise(signal);
  return exit_code(signal);
}

}  // namespace kd
