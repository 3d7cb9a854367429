#include "launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kd/core/error.h"

namespace kd::app {
namespace {

constexpr int kMaxRanks = 256;
pid_t g_children[kMaxRanks];
volatile sig_atomic_t g_count = 0;
volatile sig_atomic_t g_forwarded = 0;

extern "C" void forward_signal(int signal) {
  g_forwarded = signal;
  for (int i = 0; i < g_count; ++i) {
    if (g_children[i] > 0) ::kill(g_children[i], signal);
  }
}

// A port nothing listens on now (the kernel's choice for port 0); the ranks bind it a moment later.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(ErrorCategory::kDistributed, fmt::format("socket(): {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error(ErrorCategory::kDistributed, fmt::format("cannot find a free port on 127.0.0.1 ({}); set MASTER_PORT", why));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

int exit_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int launch_local_ranks(const std::string& program, const std::vector<std::string>& args, const LaunchOptions& o) {
  if (o.nproc < 1 || o.nproc > kMaxRanks) {
    throw Error(ErrorCategory::kConfig, fmt::format("--nproc {} must be in [1, {}]", o.nproc, kMaxRanks));
  }
  const char* addr_env = std::getenv("MASTER_ADDR");
  const char* port_env = std::getenv("MASTER_PORT");
  const std::string addr = addr_env && *addr_env ? addr_env : "127.0.0.1";
  const std::string port = port_env && *port_env ? std::string(port_env) : std::to_string(free_port());
  spdlog::info("starting {} ranks on this machine (rendezvous {}:{})", o.nproc, addr, port);

  struct sigaction forward{}, old_int{}, old_term{};
  forward.sa_handler = forward_signal;
  sigemptyset(&forward.sa_mask);
  ::sigaction(SIGINT, &forward, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);

  std::vector<char*> argv;
  const std::string name = o.name.empty() ? program : o.name;
  argv.push_back(const_cast<char*>(name.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  g_count = 0;
  const pid_t launcher = ::getpid();
  for (int rank = 0; rank < o.nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGTERM);
      throw Error(ErrorCategory::kDistributed, fmt::format("cannot start rank {}: fork(): {}", rank, std::strerror(errno)));
    }
    if (pid == 0) {
      // The child: default signal handling, its place in the job, then this same program.
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setpgid(0, 0);  // out of the terminal's group: a Ctrl-C reaches the ranks once, forwarded by us
      // A rank dies with its launcher (SIGKILL included), so no orphan trains on and writes checkpoints; the
      // kernel keeps this across execv. Checked after setting it: the launcher may already be gone.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) ::_exit(128 + SIGKILL);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", addr.c_str(), 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::execv(program.c_str(), argv.data());
      std::fprintf(stderr, "kd-train: cannot run %s as rank %d: %s\n", program.c_str(), rank, std::strerror(errno));
      ::_exit(127);
    }
    g_children[rank] = pid;
    g_count = rank + 1;
  }

  using Clock = std::chrono::steady_clock;
  int result = 0, failed_rank = -1, running = o.nproc;
  Clock::time_point first_failure{};
  bool terminated = false, killed = false;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int rank = 0;
      while (rank < o.nproc && g_children[rank] != pid) ++rank;
      if (rank == o.nproc) continue;
      g_children[rank] = -1;
      --running;
      const int code = exit_status(status);
      if (code != 0 && failed_rank < 0) {
        failed_rank = rank;
        result = code;
        first_failure = Clock::now();
        if (!g_forwarded) {
          spdlog::error("rank {} ended with status {}; the other ranks stop at their next collective (killed after {} s)",
                        rank, code, o.grace_s);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (failed_rank >= 0) {
      const double waited = std::chrono::duration<double>(Clock::now() - first_failure).count();
      const int signal = !terminated && waited > o.grace_s ? SIGTERM : !killed && waited > o.grace_s + 10 ? SIGKILL : 0;
      if (signal) {
        spdlog::error("{} ranks still running {:.0f} s after rank {} failed: sending {}", running, waited, failed_rank,
                      signal == SIGTERM ? "SIGTERM" : "SIGKILL");
        for (int i = 0; i < o.nproc; ++i) if (g_children[i] > 0) ::kill(g_children[i], signal);
        (signal == SIGTERM ? terminated : killed) = true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  g_count = 0;
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return result;
}

int forwarded_signal() { return g_forwarded; }

}  // namespace kd::app
