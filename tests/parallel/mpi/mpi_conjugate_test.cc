// The conjugate-operator checks of conjugate_test.cc on the MPI backend with t = the world
// size, run under mpirun -np 2 and -np 4 (tests/parallel/tests.cmake).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tuple>

#include "parallel/comm/mpi_group.h"
#include "tests/parallel/conjugate_checks.h"

namespace tessera::parallel {
namespace {

// A world of its own (make_mpi_world duplicates MPI_COMM_WORLD), separate from the one
// mpi_collectives_test.cc uses.
ProcessGroup& world() {
  static ProcessGroupPtr group = make_mpi_world();
  return *group;
}

TEST(MpiConjugate, TensorParallelMlpMatchesOneRank) {
  if (!testing::splits_evenly(world())) GTEST_SKIP() << testing::splits_evenly(world()).message();
  testing::check_tensor_parallel_mlp(world());
}

TEST(MpiConjugate, SequenceParallelMlpMatchesOneRank) {
  if (!testing::splits_evenly(world())) GTEST_SKIP() << testing::splits_evenly(world()).message();
  testing::check_sequence_parallel_mlp(world());
}

TEST(MpiConjugate, AsyncWorkIsReadAfterWait) { testing::check_operators_async(world()); }

// Two interleaved TP groups of world/2 ranks each (TP x DP), ordered by descending rank.
TEST(MpiConjugate, TensorParallelSubgroups) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  auto tp = world().split(world().rank() % 2, -world().rank());
  ASSERT_NE(tp, nullptr);
  if (!testing::splits_evenly(*tp)) GTEST_SKIP() << testing::splits_evenly(*tp).message();
  testing::check_tensor_parallel_mlp(*tp);
  testing::check_sequence_parallel_mlp(*tp);
}

using RegionParam = std::tuple<size_t, DType>;
class MpiConjugateOperators : public ::testing::TestWithParam<RegionParam> {};

TEST_P(MpiConjugateOperators, MatchCollectives) {
  testing::check_region_operators(world(), std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(All, MpiConjugateOperators,
                         ::testing::Combine(::testing::Values<size_t>(0, 1, 7, 1001),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)),
                         [](const ::testing::TestParamInfo<RegionParam>& info) {
                           return fmt::format("n{}_{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)));
                         });

}  // namespace
}  // namespace tessera::parallel
