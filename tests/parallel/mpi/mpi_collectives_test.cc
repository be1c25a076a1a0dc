// The collective suite of thread_collectives_test.cc on the MPI backend, run under mpirun
// -np 2 and -np 4 (tests/parallel/tests.cmake).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tuple>

#include "parallel/comm/mpi_group.h"
#include "parallel/topology.h"
#include "runtime/core/error.h"
#include "tests/parallel/collective_checks.h"

namespace tessera::parallel {
namespace {

ProcessGroup& world() {
  static ProcessGroupPtr group = make_mpi_world();
  return *group;
}

using ReductionParam = std::tuple<size_t, DType, ReduceOp>;
class MpiReductions : public ::testing::TestWithParam<ReductionParam> {};

TEST_P(MpiReductions, MatchReference) {
  const auto [count, dtype, op] = GetParam();
  testing::check_reductions(world(), testing::CollectiveCase{count, dtype, op});
}

std::string reduction_name(const ::testing::TestParamInfo<ReductionParam>& info) {
  return fmt::format("n{}_{}_{}", std::get<0>(info.param), dtype_name(std::get<1>(info.param)),
                     reduce_op_name(std::get<2>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(SmallCounts, MpiReductions,
                         ::testing::Combine(::testing::Values<size_t>(0, 1, 1001),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16),
                                            ::testing::Values(ReduceOp::Sum, ReduceOp::Avg,
                                                              ReduceOp::Max)),
                         reduction_name);
INSTANTIATE_TEST_SUITE_P(LargeCounts, MpiReductions,
                         ::testing::Values(ReductionParam{1 << 20, DType::F32, ReduceOp::Sum},
                                           ReductionParam{(1 << 20) + 3, DType::BF16,
                                                          ReduceOp::Avg},
                                           ReductionParam{1 << 20, DType::F16, ReduceOp::Max}),
                         reduction_name);

class MpiDataMovement : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(MpiDataMovement, MatchReference) {
  testing::check_data_movement(world(), std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(All, MpiDataMovement,
                         ::testing::Combine(::testing::Values<size_t>(0, 1, 1001, 1 << 18),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           return fmt::format("n{}_{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)));
                         });

TEST(MpiSendRecv, Ring) {
  for (size_t count : {size_t{0}, size_t{1}, size_t{1001}, size_t{1} << 20})
    testing::check_send_recv(world(), count);
}

TEST(MpiGroup, SplitOrdersByKey) {
  ProcessGroup& w = world();
  const int r = w.rank();
  auto sub = w.split(r % 2, -r);
  ASSERT_NE(sub, nullptr);
  std::vector<int32_t> members(sub->size());
  const int32_t me = r;
  sub->all_gather(&me, members.data(), 1, DType::I32)->wait();
  EXPECT_TRUE(std::is_sorted(members.rbegin(), members.rend()));
  EXPECT_EQ(members[sub->rank()], r);
  auto none = w.split(-1, 0);
  EXPECT_EQ(none, nullptr);
}

TEST(MpiGroup, TopologyGroups) {
  ProcessGroup& w = world();
  for (ParallelShape shape :
       {ParallelShape{w.size(), 1, 1}, ParallelShape{1, w.size(), 1}, ParallelShape{1, 1, w.size()},
        ParallelShape{w.size() / 2, 2, 1}, ParallelShape{1, 2, w.size() / 2}}) {
    if (shape.world_size() != w.size()) continue;
    Topology topo(w, shape);
    const int32_t me = w.rank();
    for (auto [group, expected] : {std::pair{&topo.tp(), tp_group_ranks(shape, me)},
                                   std::pair{&topo.dp(), dp_group_ranks(shape, me)},
                                   std::pair{&topo.pp(), pp_group_ranks(shape, me)}}) {
      std::vector<int32_t> members(group->size());
      group->all_gather(&me, members.data(), 1, DType::I32)->wait();
      EXPECT_EQ(std::vector<int>(members.begin(), members.end()), expected);
    }
  }
}

TEST(MpiGroup, ManyOutstandingCollectives) {
  ProcessGroup& w = world();
  std::vector<std::vector<float>> bufs(32, std::vector<float>(999));
  std::vector<WorkPtr> works;
  for (size_t k = 0; k < bufs.size(); ++k) {
    std::fill(bufs[k].begin(), bufs[k].end(), static_cast<float>(k + w.rank()));
    works.push_back(
        w.all_reduce(bufs[k].data(), bufs[k].size(), DType::F32, {.op = ReduceOp::Max}));
  }
  for (auto& work : works) work->wait();
  for (size_t k = 0; k < bufs.size(); ++k)
    EXPECT_EQ(bufs[k][0], static_cast<float>(k + w.size() - 1));
}

TEST(MpiGroup, RejectsBadArguments) {
  int32_t x = 0;
  EXPECT_THROW(world().all_reduce(&x, 1, DType::I32), InvalidArgument);
  EXPECT_THROW(world().send(&x, 1, DType::I32, world().size()), InvalidArgument);
}

}  // namespace
}  // namespace tessera::parallel
