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

// One launcher's variables: (rank, world, local rank) names.
struct Source {
  const char* label;
  const char* rank;
  const char* world;
  const char* local_rank;
};

}  // namespace

RankEnv detect_rank_env() {
  static const Source sources[] = {
      {"OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
      {"PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
  };
  for (const Source& s : sources) {
    RankEnv env;
    if (!read_int(s.rank, &env.rank) || !read_int(s.world, &env.world)) continue;
    read_int(s.local_rank, &env.local_rank);
    TS_CHECK(env.world >= 1 && env.rank < env.world, "{}={} is outside {}={}", s.rank, env.rank,
             s.world, env.world);
    env.source = std::string(s.label) + " (" + s.rank + ", " + s.world + ")";
    return env;
  }
  return {};
}

}  // namespace tessera::launch
