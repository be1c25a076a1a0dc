// Stage3Gatherer on a fake forward + backward walk (layers 0, 1, 2, 3, 3, 2, 1, 0) over
// thread ranks, each holding only its parameter shard: every acquire returns the whole layer
// on every rank, live gathered elements never exceed the limit, the second training pass
// prefetches along the order the first recorded (a forward-only pass does not), persistent
// layers stay whole and follow refresh_persistent(), and a limit below a layer is refused.
#include "memory/zero/stage3_gatherer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tuple>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tests/memory/fake_model.h"

namespace tessera::memory {
namespace {

using test_util::fake_model;

// Exact in every working dtype.
float model_value(int64_t elem, float offset) { return static_cast<float>(elem % 61 + 1) + offset; }

// This rank's working shard of the model (padding zero).
std::vector<char> make_shard(const ShardLayout& layout, DType dtype, float offset) {
  std::vector<float> v(static_cast<size_t>(layout.shard.numel()), 0.0f);
  for (int64_t i = 0; i < layout.shard.numel(); ++i) {
    const int64_t elem = layout.shard.begin + i;
    if (elem < layout.numel) v[i] = model_value(elem, offset);
  }
  std::vector<char> out(v.size() * dtype_size(dtype));
  store_working(dtype, v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

void expect_whole_layer(const ParamRegistry& registry, int layer, DType dtype, const void* p,
                        float offset) {
  const LayerRange& r = registry.layer(layer);
  const std::vector<float> got = test_util::from_working(dtype, p, r.numel());
  for (int64_t i = 0; i < r.numel(); ++i) {
    ASSERT_EQ(got[i], model_value(r.begin + i, offset)) << "layer " << layer << " element " << i;
  }
}

const std::vector<int> kWalk = {0, 1, 2, 3, 3, 2, 1, 0};  // forward, then backward

using Param = std::tuple<int, DType, int64_t>;  // world, dtype, max live elements
class GathererWalk : public testing::TestWithParam<Param> {};

TEST_P(GathererWalk, WholeLayersWithinTheLiveLimitPrefetchingAlongTheRecordedOrder) {
  const auto [world, dtype, max_live] = GetParam();
  const ParamRegistry registry = fake_model();
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    const ShardLayout layout(registry.numel(), group.rank(), world);
    std::vector<char> shard = make_shard(layout, dtype, 0.0f);
    GatherOptions o;
    o.dtype = dtype;
    o.persistence_threshold = 5;  // layer 3
    o.prefetch_elems = 50;        // layer 1 ahead, or layer 2 (23) but not 2 and 1 (73)
    o.max_live_elems = max_live;
    Stage3Gatherer g(registry, group, o, shard.data());
    EXPECT_EQ(g.num_persistent_layers(), 1);
    EXPECT_TRUE(g.is_persistent(3));
    EXPECT_EQ(g.persistent_bytes(), static_cast<int64_t>(5 * dtype_size(dtype)));
    g.refresh_persistent();

    auto walk = [&](bool training, int pass) {
      g.begin_pass(training);
      EXPECT_TRUE(g.is_gathered(3)) << "persistent layers stay whole across passes";
      for (size_t k = 0; k < kWalk.size(); ++k) {
        const int layer = kWalk[k];
        const void* p = g.acquire(layer);
        EXPECT_LE(g.live_elems(), max_live) << "pass " << pass << " step " << k;
        expect_whole_layer(registry, layer, dtype, p, 0.0f);
        if (k == 0) {
          // Only a training pass that follows the recorded order prefetches: layer 1 (50
          // elements) fits the prefetch budget and, at 87 live, the limit; layer 2 does not.
          const bool prefetching = training && pass > 0 && max_live >= 87;
          EXPECT_EQ(g.is_gathered(1), prefetching) << "pass " << pass;
          EXPECT_FALSE(g.is_gathered(2)) << "pass " << pass;
        }
        g.release(layer);
        EXPECT_LE(g.live_elems(), max_live);
      }
      if (training) g.end_training_pass();
    };
    walk(/*training=*/true, 0);  // records
    EXPECT_EQ(g.recorded_order(), kWalk);
    walk(/*training=*/true, 1);   // follows and prefetches
    walk(/*training=*/false, 2);  // forward-only: on demand
    walk(/*training=*/true, 3);
    EXPECT_LE(g.peak_live_elems(), max_live);
    EXPECT_GE(g.peak_live_elems(), 50);  // the largest layer was gathered whole

    // An update changes the shards: persistent layers follow after the refresh, gathered
    // layers on their next acquire.
    const std::vector<char> updated = make_shard(layout, dtype, 100.0f);
    std::copy(updated.begin(), updated.end(), shard.begin());
    g.refresh_persistent();
    g.begin_pass(true);
    for (int layer : {3, 1}) {
      expect_whole_layer(registry, layer, dtype, g.acquire(layer), 100.0f);
      g.release(layer);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(ThreadRanks, GathererWalk,
                         testing::Combine(testing::Values(1, 2, 3, 4, 5),
                                          testing::Values(DType::F32, DType::BF16),
                                          testing::Values<int64_t>(50, 87, 1000)),
                         [](const testing::TestParamInfo<Param>& info) {
                           return fmt::format("w{}_{}_live{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)),
                                              std::get<2>(info.param));
                         });

TEST(Stage3Gatherer, EvictsUnusedPrefetchedLayersToStayUnderTheLimit) {
  // Prefetch unbounded, room for layers 0 and 1 (87): after layer 0 is acquired, layer 1 is
  // prefetched; acquiring layer 2 out of order must drop layer 1 (unused) to fit.
  const ParamRegistry registry = fake_model();
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    const ShardLayout layout(registry.numel(), group.rank(), 2);
    std::vector<char> shard = make_shard(layout, DType::F32, 0.0f);
    GatherOptions o;
    o.persistence_threshold = 0;
    o.prefetch_elems = 1'000'000;
    o.max_live_elems = 87;
    Stage3Gatherer g(registry, group, o, shard.data());
    g.begin_pass(true);
    for (int layer : kWalk) {
      g.acquire(layer);
      g.release(layer);
    }
    g.end_training_pass();
    g.begin_pass(true);
    g.acquire(0);
    EXPECT_TRUE(g.is_gathered(1));
    EXPECT_EQ(g.live_elems(), 87);
    expect_whole_layer(registry, 2, DType::F32, g.acquire(2), 0.0f);  // leaves the order
    EXPECT_FALSE(g.is_gathered(1));
    EXPECT_EQ(g.live_elems(), 37 + 23);
    g.release(2);
    g.release(0);
    EXPECT_LE(g.peak_live_elems(), 87);
  });
}

TEST(Stage3Gatherer, RefusesALiveLimitBelowALayer) {
  const ParamRegistry registry = fake_model();
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    const ShardLayout layout(registry.numel(), group.rank(), 2);
    std::vector<char> shard = make_shard(layout, DType::F32, 0.0f);
    GatherOptions o;
    o.max_live_elems = 40;
    o.persistence_threshold = 5;
    try {
      Stage3Gatherer g(registry, group, o, shard.data());
      ADD_FAILURE() << "a live limit below layer 1 was accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "stage3_max_live_parameters (40) is below layer 1's 50 parameters"),
                std::string::npos)
          << e.what();
    }
  });
}

}  // namespace
}  // namespace tessera::memory
