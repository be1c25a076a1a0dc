// ShardedOptimizerState over thread ranks: the ranks' shards partition the model in rank
// order (equal 16-element multiples, the padding at the end when numel % world != 0); the
// initialiser is asked for the rank's own elements only and nothing whole is allocated at
// stage 3; stages 1-2 rebuild the whole working copy from the shards; gather_full rebuilds
// the fp32 model bit for bit; publish_update spreads updated shards; and a failing
// initialiser on one rank fails every rank with its message.
#include "memory/zero/optimizer_state.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <tuple>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tests/memory/fake_model.h"

namespace tessera::memory {
namespace {

using test_util::fake_model;

std::vector<char> working_bytes(DType dtype, const float* v, int64_t n) {
  std::vector<char> out(static_cast<size_t>(n) * dtype_size(dtype));
  store_working(dtype, v, out.data(), n);
  return out;
}

using Param = std::tuple<int, int, DType>;  // world, stage, dtype
class OptimizerStateShards : public testing::TestWithParam<Param> {};

TEST_P(OptimizerStateShards, PartitionTheModelAndRebuildIt) {
  const auto [world, stage, dtype] = GetParam();
  const ParamRegistry registry = fake_model();
  const int64_t numel = registry.numel();
  std::vector<float> full(static_cast<size_t>(numel));
  init_params(registry, full.data(), 7);
  const size_t es = dtype_size(dtype);
  std::vector<ShardRange> owned(world), shard(world), init_calls(world);
  std::vector<int> init_count(world, 0);
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    const int rank = group.rank();
    MemoryTracker tracker;
    ScopedTracker scoped(tracker);
    const ShardInit init = [&](ShardRange range, float* out) {
      ++init_count[rank];
      init_calls[rank] = range;
      std::memcpy(out, full.data() + range.begin, range.numel() * sizeof(float));
    };
    ShardedOptimizerState state(registry, group, stage, dtype, init);
    const ShardLayout& layout = state.layout();
    const OptimizerShard s = state.shard();
    owned[rank] = s.range;
    shard[rank] = layout.shard;
    EXPECT_EQ(s.range.begin, layout.owned().begin);
    EXPECT_EQ(s.range.end, layout.owned().end);
    if (s.range.numel() > 0) {
      EXPECT_EQ(init_count[rank], 1);
      EXPECT_EQ(init_calls[rank].begin, s.range.begin);
      EXPECT_EQ(init_calls[rank].end, s.range.end);
    } else {
      EXPECT_EQ(init_count[rank], 0);  // all padding: nothing to ask for
    }

    // What the rank holds: the shard (plus whole working buffers at stages 1-2), nothing else.
    const MemorySnapshot m = tracker.snapshot();
    const int64_t S = layout.shard.numel();
    EXPECT_EQ(m.current_of(MemCategory::Params), (stage <= 2 ? layout.padded : S) * int64_t(es));
    EXPECT_EQ(m.current_of(MemCategory::Grads), (stage == 1 ? layout.padded : S) * int64_t(es));
    EXPECT_EQ(m.current_of(MemCategory::Optimizer),
              S * int64_t(sizeof(float)) * (is_16bit(dtype) ? 3 : 2));
    EXPECT_EQ(m.peak_of(MemCategory::Other), 0);
    EXPECT_EQ(state.padding_param_bytes(), stage <= 2 ? (layout.padded - numel) * int64_t(es) : 0);
    EXPECT_EQ(state.padding_grad_bytes(), stage == 1 ? (layout.padded - numel) * int64_t(es) : 0);

    // The fp32 shard is the initial values, the working shard their rounding.
    if (s.range.numel() > 0) {
      const std::vector<char> want_params =
          working_bytes(dtype, full.data() + s.range.begin, s.range.numel());
      EXPECT_EQ(std::memcmp(s.params, want_params.data(), want_params.size()), 0);
      EXPECT_EQ(std::memcmp(s.master, full.data() + s.range.begin, s.range.numel() * sizeof(float)),
                0);
    }
    if (!is_16bit(dtype)) {
      EXPECT_EQ(static_cast<void*>(s.master), s.params);
    }

    if (stage <= 2) {
      // The whole working copy, built from the shards: every element, padding zero.
      const std::vector<char> want = working_bytes(dtype, full.data(), numel);
      const char* got = static_cast<const char*>(state.full_params());
      EXPECT_EQ(std::memcmp(got, want.data(), want.size()), 0);
      for (int64_t i = numel * int64_t(es); i < layout.padded * int64_t(es); ++i) {
        ASSERT_EQ(got[i], 0) << "padding byte " << i;
      }
    } else {
      EXPECT_THROW(state.full_params(), InvalidArgument);
    }
    if (stage == 1) {
      EXPECT_EQ(static_cast<char*>(state.grad_shard()),
                static_cast<char*>(state.full_grads()) + layout.shard.begin * int64_t(es));
    }

    std::vector<float> rebuilt(static_cast<size_t>(numel), -1.0f);
    state.gather_full(rebuilt.data());
    EXPECT_EQ(std::memcmp(rebuilt.data(), full.data(), full.size() * sizeof(float)), 0);

    if (stage <= 2) {
      // An "update": each rank writes rank + 1 over its shard; every rank then sees them all.
      const std::vector<float> mark(static_cast<size_t>(s.range.numel()), rank + 1.0f);
      store_working(dtype, mark.data(), s.params, s.range.numel());
      state.publish_update();
      const std::vector<float> got = test_util::from_working(dtype, state.full_params(), numel);
      for (int64_t i = 0; i < numel; ++i) {
        ASSERT_EQ(got[i], static_cast<float>(i / layout.shard.numel() + 1)) << "element " << i;
      }
    }
  });
  // Shards: equal, aligned, abutting in rank order; the owned ranges tile [0, numel).
  const int64_t per_rank = shard[0].numel();
  EXPECT_EQ(per_rank % 16, 0);
  EXPECT_GE(per_rank * world, numel);
  EXPECT_LT(per_rank * world - numel, 16 * world);
  // (On 5 ranks the last shard is all padding: its owned range is empty.)
  int64_t next = 0;
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(shard[r].begin, r * per_rank);
    EXPECT_EQ(shard[r].numel(), per_rank);
    if (owned[r].numel() == 0) {
      EXPECT_GE(shard[r].begin, numel) << "rank " << r;
      continue;
    }
    EXPECT_EQ(owned[r].begin, next) << "rank " << r;
    next = owned[r].end;
  }
  EXPECT_EQ(next, numel);
}

INSTANTIATE_TEST_SUITE_P(ThreadRanks, OptimizerStateShards,
                         testing::Combine(testing::Values(1, 2, 3, 4, 5, 8),
                                          testing::Values(1, 2, 3),
                                          testing::Values(DType::F32, DType::BF16, DType::F16)),
                         [](const testing::TestParamInfo<Param>& info) {
                           return fmt::format("w{}_stage{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param),
                                              dtype_name(std::get<2>(info.param)));
                         });

TEST(OptimizerState, AFailingInitialiserOnOneRankFailsEveryRankWithItsMessage) {
  const ParamRegistry registry = fake_model();
  for (int stage : {1, 3}) {
    std::mutex mu;
    std::vector<std::string> messages;
    parallel::spawn_ranks(4, [&](parallel::ProcessGroup& group) {
      const ShardInit init = [&](ShardRange, float*) {
        if (group.rank() == 2) TS_THROW(InvalidArgument, "cannot read slice on rank 2");
      };
      try {
        ShardedOptimizerState state(registry, group, stage, DType::F32, init);
        ADD_FAILURE() << "rank " << group.rank() << " went on";
      } catch (const InvalidArgument& e) {
        std::lock_guard<std::mutex> lock(mu);
        messages.push_back(e.what());
      }
    });
    ASSERT_EQ(messages.size(), 4u);
    for (const std::string& m : messages) {
      EXPECT_EQ(m, messages[0]);
      EXPECT_NE(m.find("cannot read slice on rank 2"), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace tessera::memory
