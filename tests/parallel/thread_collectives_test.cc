// Every collective on thread ranks: world sizes 1..8, counts 0, 1, odd and large, each dtype
// and op, against the reference in collective_checks.h; split; send/recv.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <tuple>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tests/parallel/collective_checks.h"

namespace tessera::parallel {
namespace {

using testing::check_data_movement;
using testing::check_reductions;
using testing::check_send_recv;
using testing::CollectiveCase;

using ReductionParam = std::tuple<int, size_t, DType, ReduceOp>;

class ThreadReductions : public ::testing::TestWithParam<ReductionParam> {};

TEST_P(ThreadReductions, MatchReference) {
  const auto [world, count, dtype, op] = GetParam();
  spawn_ranks(world, [&](ProcessGroup& pg) {
    check_reductions(pg, CollectiveCase{count, dtype, op});
  });
}

std::string reduction_name(const ::testing::TestParamInfo<ReductionParam>& info) {
  const auto [world, count, dtype, op] = info.param;
  return fmt::format("w{}_n{}_{}_{}", world, count, dtype_name(dtype), reduce_op_name(op));
}

INSTANTIATE_TEST_SUITE_P(
    SmallCounts, ThreadReductions,
    ::testing::Combine(::testing::Range(1, 9), ::testing::Values<size_t>(0, 1, 1001),
                       ::testing::Values(DType::F32, DType::F16, DType::BF16),
                       ::testing::Values(ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max)),
    reduction_name);

// Large messages exercise the slicing across ranks and the vectorised loops; a subset keeps the
// suite fast on small machines.
INSTANTIATE_TEST_SUITE_P(
    LargeCounts, ThreadReductions,
    ::testing::Values(ReductionParam{2, 1 << 20, DType::F32, ReduceOp::Sum},
                      ReductionParam{3, (1 << 20) + 3, DType::BF16, ReduceOp::Avg},
                      ReductionParam{4, 1 << 20, DType::F16, ReduceOp::Sum},
                      ReductionParam{5, (1 << 20) + 1, DType::F32, ReduceOp::Max},
                      ReductionParam{8, 1 << 20, DType::F32, ReduceOp::Avg}),
    reduction_name);

using MovementParam = std::tuple<int, size_t, DType>;
class ThreadDataMovement : public ::testing::TestWithParam<MovementParam> {};

std::string movement_name(const ::testing::TestParamInfo<MovementParam>& info) {
  return fmt::format("w{}_n{}_{}", std::get<0>(info.param), std::get<1>(info.param),
                     dtype_name(std::get<2>(info.param)));
}

TEST_P(ThreadDataMovement, MatchReference) {
  const auto [world, count, dtype] = GetParam();
  spawn_ranks(world, [&](ProcessGroup& pg) { check_data_movement(pg, count, dtype); });
}

INSTANTIATE_TEST_SUITE_P(All, ThreadDataMovement,
                         ::testing::Combine(::testing::Range(1, 9),
                                            ::testing::Values<size_t>(0, 1, 1001, 1 << 18),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         movement_name);

class ThreadSendRecv : public ::testing::TestWithParam<std::tuple<int, size_t>> {};

std::string send_recv_name(const ::testing::TestParamInfo<std::tuple<int, size_t>>& info) {
  return fmt::format("w{}_n{}", std::get<0>(info.param), std::get<1>(info.param));
}

TEST_P(ThreadSendRecv, Ring) {
  const auto [world, count] = GetParam();
  spawn_ranks(world, [&](ProcessGroup& pg) { check_send_recv(pg, count); });
}

INSTANTIATE_TEST_SUITE_P(All, ThreadSendRecv,
                         ::testing::Combine(::testing::Values(1, 2, 3, 8),
                                            ::testing::Values<size_t>(0, 1, 1001, 1 << 20)),
                         send_recv_name);

TEST(ThreadGroup, DataMovementAcceptsAnyDtype) {
  spawn_ranks(3, [](ProcessGroup& pg) {
    std::vector<int32_t> mine{pg.rank() * 10, pg.rank() * 10 + 1};
    std::vector<int32_t> all(6);
    pg.all_gather(mine.data(), all.data(), 2, DType::I32)->wait();
    EXPECT_EQ(all, (std::vector<int32_t>{0, 1, 10, 11, 20, 21}));
  });
}

TEST(ThreadGroup, ReductionRejectsIntegerDtype) {
  spawn_ranks(1, [](ProcessGroup& pg) {
    int32_t x = 1;
    EXPECT_THROW(pg.all_reduce(&x, 1, DType::I32), InvalidArgument);
  });
}

TEST(ThreadGroup, RejectsBadRootAndCounts) {
  spawn_ranks(2, [](ProcessGroup& pg) {
    float x = 0;
    EXPECT_THROW(pg.broadcast(&x, 1, DType::F32, {.root = 2}), InvalidArgument);
    const std::vector<size_t> three{1, 1, 1};
    EXPECT_THROW(pg.all_gather_v(&x, &x, three, DType::F32), InvalidArgument);
  });
}

TEST(ThreadGroup, CollectivesOverlapAndCompleteInOrder) {
  spawn_ranks(4, [](ProcessGroup& pg) {
    std::vector<std::vector<float>> bufs(16, std::vector<float>(4097));
    std::vector<WorkPtr> works;
    for (size_t k = 0; k < bufs.size(); ++k) {
      std::fill(bufs[k].begin(), bufs[k].end(), static_cast<float>(pg.rank() + k));
      works.push_back(pg.all_reduce(bufs[k].data(), bufs[k].size(), DType::F32));
    }
    for (auto& w : works) w->wait();
    for (size_t k = 0; k < bufs.size(); ++k) {
      EXPECT_EQ(bufs[k][4096], static_cast<float>(0 + 1 + 2 + 3 + 4 * k));
      EXPECT_TRUE(works[k]->is_completed());
    }
  });
}

TEST(ThreadSplit, ColorsAndKeysOrderTheNewGroups) {
  spawn_ranks(6, [](ProcessGroup& world) {
    const int r = world.rank();
    // Even and odd ranks, each ordered by descending world rank.
    auto sub = world.split(r % 2, -r);
    ASSERT_NE(sub, nullptr);
    EXPECT_EQ(sub->size(), 3);
    EXPECT_EQ(sub->rank(), (5 - r) / 2);
    std::vector<int32_t> members(3);
    const int32_t me = r;
    sub->all_gather(&me, members.data(), 1, DType::I32)->wait();
    EXPECT_EQ(members,
              r % 2 == 0 ? (std::vector<int32_t>{4, 2, 0}) : (std::vector<int32_t>{5, 3, 1}));
    float sum = static_cast<float>(r);
    sub->all_reduce(&sum, 1, DType::F32)->wait();
    EXPECT_EQ(sum, r % 2 == 0 ? 6.0f : 9.0f);

    // Nested split, and opting out with a negative color.
    auto pair = sub->split(sub->rank() < 2 ? 0 : -1, 0);
    if (sub->rank() < 2) {
      ASSERT_NE(pair, nullptr);
      EXPECT_EQ(pair->size(), 2);
      pair->barrier()->wait();
    } else {
      EXPECT_EQ(pair, nullptr);
    }
    // The parent stays usable after splitting.
    float one = 1;
    world.all_reduce(&one, 1, DType::F32)->wait();
    EXPECT_EQ(one, 6.0f);
  });
}

TEST(ThreadSplit, ConcurrentCollectivesOnSiblingGroups) {
  spawn_ranks(8, [](ProcessGroup& world) {
    auto sub = world.split(world.rank() / 4, world.rank());
    std::vector<float> big(100'003, 1.0f);
    for (int i = 0; i < 5; ++i) sub->all_reduce(big.data(), big.size(), DType::F32)->wait();
    EXPECT_EQ(big.back(), 1024.0f);
  });
}

}  // namespace
}  // namespace tessera::parallel
