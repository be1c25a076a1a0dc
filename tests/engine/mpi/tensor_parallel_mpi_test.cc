// Tensor parallelism under mpirun, one rank per process (run at -np 4): the checks of
// ../tensor_parallel_test.cc, each rank comparing its own losses and gradient norms with the
// single-rank run it computes itself.
#include "../tensor_parallel_checks.h"
#include "parallel/comm/mpi_group.h"

namespace tessera::engine {
namespace {

using test_util::expect_matches;
using test_util::run_steps;
using test_util::single_rank;
using test_util::tp_config;

struct MpiCase {
  int t;
  bool sp;
  int vocab;
  int stage;
};

class TensorParallelMpi : public testing::TestWithParam<MpiCase> {};

TEST_P(TensorParallelMpi, LossesAndNormsMatchSingleRankWithin1e5Relative) {
  const MpiCase p = GetParam();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  ASSERT_EQ(world->size() % p.t, 0) << "run at a multiple of " << p.t << " ranks";
  const int dp = world->size() / p.t;
  constexpr int kAccumulation = 2;
  TrainConfig c = tp_config(p.t, p.sp, p.vocab, kAccumulation);
  c.zero.stage = p.stage;
  c.zero.reduce_bucket_size = 4000;
  c.zero.stage3_param_persistence_threshold = 100;
  c.output_dir += "_mpi" + std::to_string(world->rank());
  TrainConfig one = c;
  one.gradient_accumulation_steps = dp * kAccumulation;  // the same global batch
  one.zero.stage = 0;
  const test_util::Run mine = run_steps(c, world.get());
  expect_matches({mine}, single_rank(one), 1e-5, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    World, TensorParallelMpi,
    testing::Values(MpiCase{4, false, 257, 0}, MpiCase{4, true, 257, 0},
                    MpiCase{4, true, 50257, 0}, MpiCase{2, false, 50257, 0},
                    MpiCase{2, true, 257, 1}, MpiCase{2, false, 257, 2}, MpiCase{2, true, 257, 3}),
    [](const auto& info) {
      const MpiCase& p = info.param;
      return "tp" + std::to_string(p.t) + (p.sp ? "_sp" : "") + "_vocab" +
             std::to_string(p.vocab) + "_stage" + std::to_string(p.stage);
    });

}  // namespace
}  // namespace tessera::engine
