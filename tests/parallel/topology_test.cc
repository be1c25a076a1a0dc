// Rank layout (TP fastest, then DP, then PP) and the groups split from a thread world.
#include "parallel/topology.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <set>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

TEST(Topology, MegatronRankOrder) {
  const ParallelShape shape{.dp = 2, .tp = 2, .pp = 2};
  // rank = tp + TP * (dp + DP * pp)
  EXPECT_EQ(coords_of(shape, 0), (RankCoords{.dp = 0, .tp = 0, .pp = 0}));
  EXPECT_EQ(coords_of(shape, 1), (RankCoords{.dp = 0, .tp = 1, .pp = 0}));
  EXPECT_EQ(coords_of(shape, 2), (RankCoords{.dp = 1, .tp = 0, .pp = 0}));
  EXPECT_EQ(coords_of(shape, 5), (RankCoords{.dp = 0, .tp = 1, .pp = 1}));
  EXPECT_EQ(coords_of(shape, 7), (RankCoords{.dp = 1, .tp = 1, .pp = 1}));
  EXPECT_EQ(tp_group_ranks(shape, 5), (std::vector<int>{4, 5}));
  EXPECT_EQ(dp_group_ranks(shape, 5), (std::vector<int>{5, 7}));
  EXPECT_EQ(pp_group_ranks(shape, 5), (std::vector<int>{1, 5}));
  for (int r = 0; r < 8; ++r) EXPECT_EQ(rank_of(shape, coords_of(shape, r)), r);
}

TEST(Topology, GroupsPartitionTheWorld) {
  for (ParallelShape shape :
       {ParallelShape{1, 1, 1}, ParallelShape{4, 2, 1}, ParallelShape{2, 1, 4},
        ParallelShape{1, 8, 1}, ParallelShape{3, 2, 2}}) {
    for (auto group_ranks : {tp_group_ranks, dp_group_ranks, pp_group_ranks}) {
      std::set<int> covered;
      for (int r = 0; r < shape.world_size(); ++r) {
        const auto members = group_ranks(shape, r);
        EXPECT_NE(std::find(members.begin(), members.end(), r), members.end());
        for (int m : members) EXPECT_EQ(group_ranks(shape, m), members);
        covered.insert(members.begin(), members.end());
      }
      EXPECT_EQ(static_cast<int>(covered.size()), shape.world_size());
    }
  }
}

TEST(Topology, RejectsWrongWorldSize) {
  EXPECT_THROW(coords_of(ParallelShape{2, 2, 1}, 4), InvalidArgument);
  EXPECT_THROW(coords_of(ParallelShape{0, 2, 1}, 0), InvalidArgument);
  EXPECT_THROW(spawn_ranks(3,
                           [](ProcessGroup& world) {
                             Topology(world, ParallelShape{2, 2, 1});
                           }),
               InvalidArgument);
}

class TopologyGroups : public ::testing::TestWithParam<ParallelShape> {};

std::vector<int> world_ranks_of(ProcessGroup& group, int world_rank) {
  std::vector<int32_t> ranks(group.size());
  const int32_t me = world_rank;
  group.all_gather(&me, ranks.data(), 1, DType::I32)->wait();
  return {ranks.begin(), ranks.end()};
}

TEST_P(TopologyGroups, SplitGroupsHaveTheExpectedMembers) {
  const ParallelShape shape = GetParam();
  spawn_ranks(shape.world_size(), [&](ProcessGroup& world) {
    const int r = world.rank();
    Topology topo(world, shape);
    EXPECT_EQ(topo.coords(), coords_of(shape, r));
    EXPECT_EQ(topo.tp().size(), shape.tp);
    EXPECT_EQ(topo.dp().size(), shape.dp);
    EXPECT_EQ(topo.pp().size(), shape.pp);
    EXPECT_EQ(topo.tp().rank(), topo.coords().tp);
    EXPECT_EQ(topo.dp().rank(), topo.coords().dp);
    EXPECT_EQ(topo.pp().rank(), topo.coords().pp);
    EXPECT_EQ(world_ranks_of(topo.tp(), r), tp_group_ranks(shape, r));
    EXPECT_EQ(world_ranks_of(topo.dp(), r), dp_group_ranks(shape, r));
    EXPECT_EQ(world_ranks_of(topo.pp(), r), pp_group_ranks(shape, r));
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, TopologyGroups,
                         ::testing::Values(ParallelShape{1, 1, 1}, ParallelShape{2, 2, 2},
                                           ParallelShape{4, 2, 1}, ParallelShape{2, 1, 4},
                                           ParallelShape{1, 4, 2}, ParallelShape{3, 2, 1}),
                         [](const auto& info) {
                           return fmt::format("dp{}_tp{}_pp{}", info.param.dp, info.param.tp,
                                              info.param.pp);
                         });

}  // namespace
}  // namespace tessera::parallel
