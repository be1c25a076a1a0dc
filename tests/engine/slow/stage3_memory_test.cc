// ZeRO-3 within its memory bound on 2, 4 and 8 thread ranks (stage3_memory.h says what and
// why; tests/engine/mpi/ runs the same under mpirun).
#include <vector>

#include "parallel/comm/thread_group.h"
#include "stage3_memory.h"

namespace tessera::engine {
namespace {

TEST(Stage3Memory, EveryRankPeaksWithinTheBoundOn2And4And8Ranks) {
  const TrainConfig c = test_util::stage3_memory_config();
  for (const int world : {2, 4, 8}) {
    std::vector<test_util::RankPeak> peaks(world);
    parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
      peaks[group.rank()] = test_util::measure_stage3_rank(c, group);
    });
    for (int r = 0; r < world; ++r) test_util::expect_within_stage3_bound(c, world, r, peaks[r]);
  }
}

}  // namespace
}  // namespace tessera::engine
