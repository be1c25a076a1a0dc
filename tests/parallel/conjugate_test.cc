// The conjugate operators (parallel/tp/conjugate.h) on thread ranks: a tensor-parallel and a
// sequence-parallel MLP pair against the single-rank one bit for bit, each operator against
// the collective it names, and waiting before reading. The checks are conjugate_checks.h,
// shared with the MPI tests.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tuple>

#include "parallel/comm/thread_group.h"
#include "tests/parallel/conjugate_checks.h"

namespace tessera::parallel {
namespace {

std::string world_name(const ::testing::TestParamInfo<int>& info) {
  return fmt::format("t{}", info.param);
}

class ConjugateMlp : public ::testing::TestWithParam<int> {};

TEST_P(ConjugateMlp, TensorParallelMatchesOneRank) {
  spawn_ranks(GetParam(), [](ProcessGroup& pg) { testing::check_tensor_parallel_mlp(pg); });
}

TEST_P(ConjugateMlp, SequenceParallelMatchesOneRank) {
  spawn_ranks(GetParam(), [](ProcessGroup& pg) { testing::check_sequence_parallel_mlp(pg); });
}

// t = 1 is the degenerate group (every collective a copy or nothing); 8 leaves one token
// per rank.
INSTANTIATE_TEST_SUITE_P(Worlds, ConjugateMlp, ::testing::Values(1, 2, 4, 8), world_name);

class ConjugateAsync : public ::testing::TestWithParam<int> {};

TEST_P(ConjugateAsync, WorkIsReadAfterWait) {
  spawn_ranks(GetParam(), [](ProcessGroup& pg) { testing::check_operators_async(pg); });
}

// Every rank builds every peer's inputs, t^2 / 2 MiB per rank: 2 and 4 suffice.
INSTANTIATE_TEST_SUITE_P(Worlds, ConjugateAsync, ::testing::Values(2, 4), world_name);

// A TP group is a subgroup of the world in practice (TP x DP): two interleaved groups of 2
// out of 4 ranks, each ordered by descending world rank, must still give the one-rank answer
// in group-rank order, while the sibling group runs the same operators concurrently.
TEST(ConjugateSubgroups, InterleavedTensorParallelGroups) {
  spawn_ranks(4, [](ProcessGroup& world) {
    auto tp = world.split(world.rank() % 2, -world.rank());
    ASSERT_NE(tp, nullptr);
    ASSERT_EQ(tp->size(), 2);
    testing::check_tensor_parallel_mlp(*tp);
    testing::check_sequence_parallel_mlp(*tp);
  });
}

using RegionParam = std::tuple<int, size_t, DType>;
class ConjugateOperators : public ::testing::TestWithParam<RegionParam> {};

TEST_P(ConjugateOperators, MatchCollectives) {
  const auto [world, block, dtype] = GetParam();
  spawn_ranks(world, [&](ProcessGroup& pg) { testing::check_region_operators(pg, block, dtype); });
}

std::string region_name(const ::testing::TestParamInfo<RegionParam>& info) {
  const auto [world, block, dtype] = info.param;
  return fmt::format("t{}_n{}_{}", world, block, dtype_name(dtype));
}

INSTANTIATE_TEST_SUITE_P(All, ConjugateOperators,
                         ::testing::Combine(::testing::Values(1, 2, 4),
                                            ::testing::Values<size_t>(0, 1, 7, 1001),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)),
                         region_name);

}  // namespace
}  // namespace tessera::parallel
