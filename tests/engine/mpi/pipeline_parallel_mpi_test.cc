// Pipeline parallelism under mpirun, one rank per process, each rank comparing its own losses
// and gradient norms (10 fp32 steps, within 1e-5 relative) with a reference it computes
// itself:
// - at -np 2 and -np 4: the whole world one pipeline (1F1B, and interleaved with 2 chunks a
//   rank), against the single-rank run;
// - at -np 8: DP 2 x TP 2 x PP 2, against the same config without model parallelism on 2
//   data-parallel ranks (run as thread ranks inside each process: the same global batch),
//   the gradient norms there within 3e-5.
// Tests whose world size does not match the job's are skipped, so the binary runs at each np.
#include <string>
#include <vector>

#include "../pipeline_parallel_checks.h"
#include "parallel/comm/mpi_group.h"
#include "parallel/comm/thread_group.h"

namespace tessera::engine {
namespace {

using test_util::expect_matches;
using test_util::pp_config;
using test_util::run_steps;
using test_util::without_model_parallelism;

struct WholePipelineCase {
  std::string schedule;
  int v;
};

class PipelineParallelMpi : public testing::TestWithParam<WholePipelineCase> {};

TEST_P(PipelineParallelMpi, LossesAndNormsMatchSingleRankWithin1e5Relative) {
  const WholePipelineCase& pc = GetParam();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  const int p = world->size();
  if (p != 2 && p != 4) GTEST_SKIP() << "a whole-world pipeline runs at -np 2 or 4";
  TrainConfig c = pp_config(p, pc.schedule, 4, pc.v);
  c.output_dir += "_mpi" + std::to_string(world->rank());
  const test_util::Run mine = run_steps(c, world.get());
  expect_matches({mine}, run_steps(without_model_parallelism(c), nullptr), 1e-5, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(World, PipelineParallelMpi,
                         testing::Values(WholePipelineCase{"1f1b", 1},
                                         WholePipelineCase{"gpipe", 1},
                                         WholePipelineCase{"interleaved", 2}),
                         [](const auto& info) {
                           return info.param.schedule + "_v" + std::to_string(info.param.v);
                         });

struct ThreeDCase {
  std::string schedule;
  int v;
  int zero_stage;
};

class PipelineParallel3dMpi : public testing::TestWithParam<ThreeDCase> {};

TEST_P(PipelineParallel3dMpi, Dp2Tp2Pp2MatchesTheDataParallelRun) {
  const ThreeDCase& tc = GetParam();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  if (world->size() != 8) GTEST_SKIP() << "DP 2 x TP 2 x PP 2 runs at -np 8";
  TrainConfig c = pp_config(2, tc.schedule, 4, tc.v);
  c.tensor_parallel = 2;
  c.zero.stage = tc.zero_stage;
  c.output_dir += "_mpi" + std::to_string(world->rank());
  const test_util::Run mine = run_steps(c, world.get());
  // The reference: 2 data-parallel thread ranks in this process (they report the same loss).
  std::vector<test_util::Run> dp(2);
  const TrainConfig reference = without_model_parallelism(c);
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    dp[static_cast<size_t>(group.rank())] = run_steps(reference, &group);
  });
  // The losses within 1e-5; the norms as in ../pipeline_parallel_test.cc's 3D case, 3e-5:
  // equal at step 1 (measured 1e-8), they then differ by up to 2.4e-5 (steps 4 and 6, sign
  // changing) as the 8 ranks' reductions, which the 2-rank run never makes, perturb the
  // weights Adam then updates.
  expect_matches({mine}, dp[0], 1e-5, 3e-5);
}

INSTANTIATE_TEST_SUITE_P(World, PipelineParallel3dMpi,
                         testing::Values(ThreeDCase{"1f1b", 1, 0}, ThreeDCase{"interleaved", 2, 1}),
                         [](const auto& info) {
                           return info.param.schedule + "_v" + std::to_string(info.param.v) +
                                  "_zero" + std::to_string(info.param.zero_stage);
                         });

}  // namespace
}  // namespace tessera::engine
