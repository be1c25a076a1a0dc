// CountingGroup counts the ring model's bytes per rank (an all-reduce of B bytes: 2 B (n-1)/n,
// a reduce-scatter or all-gather of a B-byte whole: B (n-1)/n), and the groups split from a
// counted one are counted apart (bench_tp reads the tensor-parallel group's bytes this way).
#include <gtest/gtest.h>

#include <vector>

#include "parallel/comm/counting_group.h"
#include "parallel/comm/thread_group.h"

namespace tessera::parallel {
namespace {

TEST(CountingGroup, CountsItsOwnAndItsSubgroupsBytesApart) {
  spawn_ranks(4, [](ProcessGroup& world) {
    CountingGroup counted(world);
    ProcessGroup& group = counted;  // the interface's defaults
    std::vector<float> x(1000, 1.0f);
    group.all_reduce(x.data(), x.size(), DType::F32)->wait();
    EXPECT_EQ(counted.volume_bytes(), 2 * 4000 * 3 / 4);
    // Pairs {0, 1} and {2, 3}, as tensor-parallel groups of 2.
    const std::shared_ptr<ProcessGroup> pair = counted.split(world.rank() / 2, world.rank());
    ASSERT_EQ(pair->size(), 2);
    std::vector<float> whole(2 * x.size());
    pair->all_gather(x.data(), whole.data(), x.size(), DType::F32)->wait();
    EXPECT_EQ(whole[1500], 4.0f);  // the inner group moved the data (x is the sum now)
    ASSERT_EQ(counted.subgroups().size(), 1u);
    EXPECT_EQ(counted.subgroups()[0]->volume_bytes(), 8000 / 2);
    EXPECT_EQ(counted.volume_bytes(), 6000);  // the subgroup's bytes are its own
    EXPECT_EQ(counted.total_volume_bytes(), 6000 + 4000);
    counted.reset();
    EXPECT_EQ(counted.total_volume_bytes(), 0);
    EXPECT_EQ(counted.split(-1, 0), nullptr);  // opting out
  });
}

}  // namespace
}  // namespace tessera::parallel
