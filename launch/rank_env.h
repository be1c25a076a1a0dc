// Where a process learns its rank and world: OpenMPI, Slurm, PMI, or torchrun-style
// variables, checked in that order.
#pragma once

#include <string>

namespace tessera::launch {

struct RankEnv {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  int local_size = 1;  // ranks on this machine
  std::string source = "none (single process)";  // which variables supplied the values
};

// Reads the environment; throws InvalidArgument when a variable is malformed or out of range.
RankEnv detect_rank_env();

}  // namespace tessera::launch
