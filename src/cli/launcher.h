#pragma once
// kd-train --nproc N: N local ranks of one data-parallel job, started, watched and stopped together.

#include <string>
#include <vector>

namespace kd::app {

struct LaunchOptions {
  int nproc = 2;
  /// A rank that failed makes the others fail at their next collective; any still running this
  /// many seconds after the first failure are sent SIGTERM, then SIGKILL 10 s later.
  double grace_s = 30.0;
  /// argv[0] of the ranks, as `ps` shows them (empty: `program`).
  std::string name;
};

/// Runs `program` with `args` as ranks 0..nproc-1 on this machine, with the torchrun environment:
/// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR (127.0.0.1 unless set) and
/// MASTER_PORT ($MASTER_PORT, else a free port). SIGINT and SIGTERM are forwarded to every rank,
/// so they stop together after the same step; a launcher that dies (even by SIGKILL) takes its ranks with it
/// (PR_SET_PDEATHSIG), so none trains on as an orphan. Returns 0 when every rank succeeded, else the first
/// failing rank's exit status (128 + N for a rank ended by signal N), after all ranks have ended.
int launch_local_ranks(const std::string& program, const std::vector<std::string>& args, const LaunchOptions& options);

/// The last SIGINT / SIGTERM launch_local_ranks forwarded to the ranks (0: none).
int forwarded_signal();

}  // namespace kd::app
