// ZeRO-3 within its memory bound under mpirun: one rank per process (run at -np 2, 4 and 8),
// each checking its own peak (../slow/stage3_memory.h says what and why).
#include "../slow/stage3_memory.h"
#include "parallel/comm/mpi_group.h"

namespace tessera::engine {
namespace {

TEST(Stage3MemoryMpi, ThisRankPeaksWithinTheBound) {
  const TrainConfig c = test_util::stage3_memory_config();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  const test_util::RankPeak p = test_util::measure_stage3_rank(c, *world);
  test_util::expect_within_stage3_bound(c, world->size(), world->rank(), p);
}

}  // namespace
}  // namespace tessera::engine
