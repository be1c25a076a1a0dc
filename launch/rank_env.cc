#include "launch/rank_env.h"

#include <cstdlib>
#include <string>

#include "runtime/core/error.h"

namespace tessera::launch {
namespace {

bool read_int(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return false;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TS_CHECK(*end == '\0' && x >= 0 && x < (1L << 30), "environment variable {}='{}' is not a rank "
           "count or index", name, v);
  *out = static_cast<int>(x);
  return true;
}

// Only a hint (how many cores to give each rank): Slurm writes forms like "2(x3)", so the
// leading number is taken and anything unreadable falls back to `fallback`.
int read_count_hint(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  const long x = std::strtol(v, nullptr, 10);
  return x >= 1 && x < (1L << 20) ? static_cast<int>(x) : fallback;
}

// One launcher's variables: (rank, world, local rank) names.
struct Source {
  const char* label;
  const char* rank;
  const char* world;
  const char* local_rank;
  const char* local_size;
};

}  // namespace

RankEnv detect_rank_env() {
  static const Source sources[] = {
      {"OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
      {"PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
  };
  for (const Source& s : sources) {
    RankEnv env;
    if (!read_int(s.rank, &env.rank) || !read_int(s.world, &env.world)) continue;
    read_int(s.local_rank, &env.local_rank);
    env.local_size = read_count_hint(s.local_size, env.world);  // unknown: assume one machine
    TS_CHECK(env.world >= 1 && env.rank < env.world, "{}={} is outside {}={}", s.rank, env.rank,
             s.world, env.world);
    env.source = std::string(s.label) + " (" + s.rank + ", " + s.world + ")";
    return env;
  }
  return {};
}

}  // namespace tessera::launch
