// The batch_send_recv checks of tests/parallel/p2p_test.cc on the MPI backend, run under
// mpirun -np 2 and -np 4 (tests/parallel/tests.cmake). The failure cases end the job, so they
// are modes of mpi_failure_main.cc instead (p2p_absent).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tuple>

#include "parallel/comm/mpi_group.h"
#include "tests/parallel/mpi/p2p_checks.h"

namespace tessera::parallel {
namespace {

// A world of its own (make_mpi_world duplicates MPI_COMM_WORLD), separate from the other files'.
ProcessGroup& world() {
  static ProcessGroupPtr group = make_mpi_world();
  return *group;
}

using RingParam = std::tuple<size_t, DType>;
class MpiP2PRing : public ::testing::TestWithParam<RingParam> {};

TEST_P(MpiP2PRing, OneBatchPerRank) {
  testing::check_batch_ring(world(), std::get<0>(GetParam()), std::get<1>(GetParam()));
}

TEST_P(MpiP2PRing, BothDirectionsInOneBatch) {
  testing::check_batch_bidirectional(world(), std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(All, MpiP2PRing,
                         ::testing::Combine(::testing::Values<size_t>(0, 1, 1001, 1 << 20),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const ::testing::TestParamInfo<RingParam>& info) {
                           return fmt::format("n{}_{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)));
                         });

// 4 MiB is far past OpenMPI's eager limit, so blocking sends in this order would deadlock.
TEST(MpiP2PBatch, BothNeighboursSendThenReceive4MiB) { testing::check_batch_big_exchange(world()); }

TEST(MpiP2PBatch, BatchesInARowKeepMessageOrder) {
  testing::check_batch_order(world(), 8, 1001);
  testing::check_batch_order(world(), 4, 1 << 18);
}

TEST(MpiP2PBatch, SendToSelfIsACopy) { testing::check_batch_self(world()); }

TEST(MpiP2PBatch, RejectsBadBatchesBeforePostingAnything) { testing::check_batch_rejects(world()); }

TEST(MpiP2PBatch, EmptyBatchIsComplete) { testing::check_empty_batch(world()); }

// The same batches on a split group: ranks are the subgroup's, not the world's.
TEST(MpiP2PBatch, RingOnASubgroup) {
  auto sub = world().split(world().rank() % 2, world().rank());
  ASSERT_NE(sub, nullptr);
  testing::check_batch_ring(*sub, 1001, DType::F32);
  testing::check_batch_big_exchange(*sub);
}

}  // namespace
}  // namespace tessera::parallel
