#pragma once
// Peak resident memory of a piece of work, for the benchmarks: /proc/self/status values and resetting
// the high-water mark (VmHWM) so it measures from now on. Linux only.
#include <cstdint>
#include <fstream>
#include <string>

namespace kd::bench {

/// A "VmRSS" / "VmHWM" line of /proc/self/status in KiB, or −1.
inline int64_t status_kib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

/// Resets VmHWM to the current VmRSS (writing 5 to /proc/self/clear_refs); false where not allowed.
inline bool reset_peak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace kd::bench
