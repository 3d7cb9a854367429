#include "kd/train/stop_signal.h"

#include <atomic>
#include <csignal>

namespace kd {
namespace {

// Lock-free, so reading and writing it in a signal handler is allowed.
std::atomic<int> g_requested{0};
static_assert(std::atomic<int>::is_always_lock_free, "the stop flag must be usable from a signal handler");

extern "C" void on_stop_signal(int signal) { g_requested.store(signal); }

}  // namespace

void StopSignal::install() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_RESTART;  // the next one of the same signal kills: a way out if a step hangs
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int StopSignal::requested() { return g_requested.load(); }

void StopSignal::request(int signal) { g_requested.store(signal); }

void StopSignal::reset() { g_requested.store(0); }

}  // namespace kd
