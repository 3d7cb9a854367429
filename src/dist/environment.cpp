// What every build has, with or without Gloo: the torchrun environment and the shard arithmetic.
#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

#include "kd/core/error.h"
#include "kd/dist/process_group.h"

namespace kd::dist {
namespace {

int64_t env_integer(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (errno != 0 || *end != '\0' || x < lo || x > hi) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("environment variable {}='{}' must be an integer in [{}, {}]", name, v, lo, hi));
  }
  return x;
}

}  // namespace

bool environment_has_ranks() {
  const char* w = std::getenv("WORLD_SIZE");
  return w && *w;
}

ProcessGroupOptions options_from_environment() {
  const int64_t world = env_integer("WORLD_SIZE", 1, 1, 1 << 16);
  const int64_t rank = env_integer("RANK", 0, 0, world - 1);
  const char* addr = std::getenv("MASTER_ADDR");
  const char* timeout = std::getenv("KD_DIST_TIMEOUT");
  ProcessGroupOptions o;
  o.world_size(world).rank(rank).local_rank(env_integer("LOCAL_RANK", rank, 0, 1 << 16));
  o.master_addr(addr && *addr ? addr : "127.0.0.1").master_port(env_integer("MASTER_PORT", 29500, 1, 65535));
  if (timeout && *timeout) o.timeout_s(static_cast<double>(env_integer("KD_DIST_TIMEOUT", 120, 1, 86400)));
  return o;
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int64_t rank, int64_t world_size) {
  const int64_t base = n / world_size, extra = n % world_size;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

}  // namespace kd::dist
