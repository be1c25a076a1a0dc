// GradBuckets on a fake backward walk over thread ranks: the plan groups layers in backward
// order up to the size, a bucket's collective launches exactly when its last layer reports,
// and after the drain the gradients hold the average over ranks (whole buffer for the
// all-reduce, the rank's own piece for the reduce-scatter, the shard for the slots, summed
// over passes there), for every mode x world size x dtype x overlap.
#include "memory/zero/grad_buckets.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tests/memory/fake_model.h"

namespace tessera::memory {
namespace {

using test_util::fake_model;
using test_util::fake_value;

// Layers 3 + 2 (5 + 23) fit in 75 elements, adding layer 1 (50) would not; 1 and 0 (37) are
// alone: buckets {3, 2}, {1}, {0}.
constexpr int64_t kBucketElems = 75;

enum class Mode { AllReduce, ReduceScatterInPlace, ReduceScatterSlots };

std::string mode_name(Mode m) {
  switch (m) {
    case Mode::AllReduce:
      return "all_reduce";
    case Mode::ReduceScatterInPlace:
      return "reduce_scatter_in_place";
    case Mode::ReduceScatterSlots:
      return "reduce_scatter_slots";
  }
  return "?";
}

// Adds this rank's fake gradients of `layer` into g (working dtype).
void write_layer_grads(const ParamRegistry& registry, int layer, int rank, DType dtype, void* g) {
  const LayerRange& r = registry.layer(layer);
  std::vector<float> v(static_cast<size_t>(r.numel()));
  for (int64_t i = 0; i < r.numel(); ++i) v[i] = fake_value(r.begin + i, rank);
  std::vector<char> working(v.size() * dtype_size(dtype));
  store_working(dtype, v.data(), working.data(), r.numel());
  accumulate_working(dtype, g, working.data(), r.numel());
}

// The average over `world` ranks of fake_value(elem, rank), times `passes`.
float expected_average(int64_t elem, int world, int passes) {
  float sum = 0.0f;
  for (int r = 0; r < world; ++r) sum += fake_value(elem, r);
  return passes * sum / static_cast<float>(world);
}

using Param = std::tuple<Mode, int, DType, bool>;
class GradBucketsWalk : public testing::TestWithParam<Param> {};

TEST_P(GradBucketsWalk, LaunchOnLastLayerAndHoldTheAverage) {
  const auto [mode, world, dtype, overlap] = GetParam();
  const ParamRegistry registry = fake_model();
  const int64_t numel = registry.numel();
  const size_t es = dtype_size(dtype);
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    const ShardLayout layout(numel, group.rank(), world);
    GradBucketOptions o;
    o.dtype = dtype;
    o.bucket_elems = kBucketElems;
    o.reduction = mode == Mode::AllReduce ? GradReduction::AllReduce : GradReduction::ReduceScatter;
    o.slots = mode == Mode::ReduceScatterSlots;
    o.overlap_comm = overlap;
    std::vector<char> full(static_cast<size_t>(numel) * es, 0);
    std::vector<char> shard(static_cast<size_t>(layout.shard.numel()) * es, 0);
    GradBuckets buckets(registry, group, o, o.slots ? nullptr : full.data(),
                        o.slots ? shard.data() : nullptr);

    ASSERT_EQ(buckets.num_buckets(), 3);
    EXPECT_EQ(buckets.bucket_of_layer(3), 0);
    EXPECT_EQ(buckets.bucket_of_layer(2), 0);
    EXPECT_EQ(buckets.bucket_of_layer(1), 1);
    EXPECT_EQ(buckets.bucket_of_layer(0), 2);
    EXPECT_EQ(buckets.bucket_range(0).begin, registry.layer(2).begin);
    EXPECT_EQ(buckets.bucket_range(0).end, numel);
    if (o.slots) {
      // Layer 0's own slot, plus two shared (one) of the largest other bucket with (without)
      // overlap.
      EXPECT_EQ(buckets.num_slots(), overlap ? 3 : 2);
      EXPECT_EQ(buckets.slot_bytes(), static_cast<int64_t>((37 + (overlap ? 2 : 1) * 50) * es));
    } else {
      EXPECT_EQ(buckets.num_slots(), 0);
      EXPECT_EQ(buckets.slot_bytes(), 0);
    }

    const int passes = o.slots ? 2 : 1;  // slots accumulate passes into the shard
    // on_reduced: each bucket's piece once per pass, its gradients final when it is called.
    std::vector<ShardRange> reported;
    int current_pass = 0;
    buckets.on_reduced([&](int64_t begin, int64_t end) {
      reported.push_back({begin, end});
      if (mode == Mode::AllReduce) return;  // checked after the drain below
      const char* base = o.slots ? shard.data() + (begin - layout.shard.begin) * es
                                 : full.data() + begin * es;
      const std::vector<float> now = test_util::from_working(dtype, base, end - begin);
      for (int64_t i = begin; i < end; ++i) {
        ASSERT_FLOAT_EQ(now[i - begin], expected_average(i, world, o.slots ? current_pass + 1 : 1))
            << "element " << i << " when its bucket was reported";
      }
    });
    for (int pass = 0; pass < passes; ++pass) {
      current_pass = pass;
      reported.clear();
      // Reductions launched after each layer (3, 2, 1, 0) reports: none for layer 3, whose
      // bucket still waits for layer 2.
      const int launched_after[4] = {3, 2, 1, 0};  // indexed by layer
      for (int layer = registry.num_layers() - 1; layer >= 0; --layer) {
        write_layer_grads(registry, layer, group.rank(), dtype, buckets.grads(layer));
        buckets.ready(layer);
        EXPECT_EQ(buckets.reductions_in_flight(), overlap ? launched_after[layer] : 0)
            << "after layer " << layer << ", pass " << pass;
      }
      buckets.drain(/*complete_pass=*/true);
      EXPECT_EQ(buckets.reductions_in_flight(), 0);
      // The pieces reported tile the rank's own elements of the model, each once.
      std::sort(reported.begin(), reported.end(),
                [](const ShardRange& a, const ShardRange& b) { return a.begin < b.begin; });
      const ShardRange mine = layout.owned();
      if (mine.numel() == 0) {
        EXPECT_TRUE(reported.empty());
      }
      int64_t at = mine.begin;
      for (const ShardRange& r : reported) {
        EXPECT_EQ(r.begin, at) << "pass " << pass;
        EXPECT_GT(r.numel(), 0);
        at = r.end;
      }
      if (mine.numel() > 0) {
        EXPECT_EQ(at, mine.end) << "pass " << pass;
      }
    }

    const ShardRange owned = layout.owned();
    if (mode == Mode::AllReduce) {
      const std::vector<float> got = test_util::from_working(dtype, full.data(), numel);
      for (int64_t i = 0; i < numel; ++i) {
        ASSERT_FLOAT_EQ(got[i], expected_average(i, world, 1)) << "element " << i;
      }
    } else if (mode == Mode::ReduceScatterInPlace) {
      // The rank's own piece of every bucket, i.e. of the model, in place.
      const std::vector<float> got = test_util::from_working(dtype, full.data(), numel);
      for (int64_t i = owned.begin; i < owned.end; ++i) {
        ASSERT_FLOAT_EQ(got[i], expected_average(i, world, 1)) << "element " << i;
      }
    } else {
      const std::vector<float> got =
          test_util::from_working(dtype, shard.data(), layout.shard.numel());
      for (int64_t i = 0; i < layout.shard.numel(); ++i) {
        const int64_t elem = layout.shard.begin + i;
        // The padding past the model receives nothing.
        const float want = elem < numel ? expected_average(elem, world, passes) : 0.0f;
        ASSERT_FLOAT_EQ(got[i], want) << "element " << elem;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(
    ThreadRanks, GradBucketsWalk,
    testing::Combine(testing::Values(Mode::AllReduce, Mode::ReduceScatterInPlace,
                                     Mode::ReduceScatterSlots),
                     testing::Values(1, 2, 4, 5), testing::Values(DType::F32, DType::BF16),
                     testing::Bool()),
    [](const testing::TestParamInfo<Param>& info) {
      return fmt::format("{}_w{}_{}_{}", mode_name(std::get<0>(info.param)),
                         std::get<1>(info.param), dtype_name(std::get<2>(info.param)),
                         std::get<3>(info.param) ? "overlap" : "no_overlap");
    });

TEST(GradBuckets, SkippedPassesAreFineButHalfABucketOrATwiceReportedLayerIsNot) {
  const ParamRegistry registry = fake_model();
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    std::vector<float> full(static_cast<size_t>(registry.numel()), 0.0f);
    GradBucketOptions o;
    o.bucket_elems = kBucketElems;
    GradBuckets buckets(registry, group, o, full.data(), nullptr);
    // A pass that reports nothing (forward only, or accumulating without reducing).
    EXPECT_NO_THROW(buckets.drain(/*complete_pass=*/false));
    EXPECT_THROW(buckets.drain(/*complete_pass=*/true), InvalidArgument);
    // Layer 3 twice must not launch bucket {3, 2} in layer 2's stead.
    buckets.ready(3);
    EXPECT_THROW(buckets.ready(3), InvalidArgument);
    EXPECT_EQ(buckets.reductions_in_flight(), 0);
    buckets.ready(1);  // bucket {1}: launches
    EXPECT_EQ(buckets.reductions_in_flight(), 1);
    EXPECT_THROW(buckets.ready(1), InvalidArgument);
    // Bucket {3, 2} is half reported: even a non-completing drain refuses that.
    try {
      buckets.drain(/*complete_pass=*/false);
      ADD_FAILURE() << "a half-reported bucket drained";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("left 1 of 2 layer(s)"), std::string::npos) << e.what();
    }
    EXPECT_EQ(buckets.reductions_in_flight(), 0);  // bucket {1}'s reduction was waited for
  });
}

// A chunked tied embedding: wte split by rows over layers 0-2 (reported twice a pass, by the
// head first and by the embedding last), wpe in layer 3, two more layers after.
ParamRegistry twice_reported_model() {
  ParamRegistry r;
  ParamSpec wte;
  wte.name = "wte.weight";
  wte.shape = {9, 4};
  wte.layer = 0;
  wte.rows_per_layer = 4;  // 4 + 4 + 1 rows
  r.add(wte);
  ParamSpec wpe;
  wpe.name = "wpe.weight";
  wpe.shape = {3, 4};
  wpe.layer = 3;
  r.add(wpe);
  for (int l = 4; l < 6; ++l) {
    ParamSpec p;
    p.name = fmt::format("h.{}.w", l);
    p.shape = {11};
    p.layer = l;
    r.add(p);
  }
  for (int l = 0; l < 3; ++l) r.set_grad_reports(l, 2);
  return r;
}

// Adds weight x fake_value to `layer`'s gradients, as a backward pass would, and reports them.
void report_fake(GradBuckets& buckets, const ParamRegistry& registry, int layer, float weight,
                 int rank) {
  const LayerRange& r = registry.layer(layer);
  auto* g = static_cast<float*>(buckets.grads(layer));
  for (int64_t i = 0; i < r.numel(); ++i) g[i] += weight * fake_value(r.begin + i, rank);
  buckets.ready(layer);
}

TEST(GradBuckets, LayersReportedTwiceAreReducedOncePerRoundIntoTheShard) {
  const ParamRegistry registry = twice_reported_model();
  ASSERT_EQ(registry.num_layers(), 6);
  EXPECT_EQ(registry.layer(2).numel(), 4);  // the last chunk: one row
  for (const bool overlap : {true, false}) {
    parallel::spawn_ranks(3, [&](parallel::ProcessGroup& group) {
      const int64_t numel = registry.numel();
      const ShardLayout layout(numel, group.rank(), group.size());
      GradBucketOptions o;
      o.bucket_elems = 32;  // chunks 2 and 1 together (20), 0 alone; never a chunk with wpe
      o.reduction = GradReduction::ReduceScatter;
      o.slots = true;
      o.overlap_comm = overlap;
      std::vector<float> shard(static_cast<size_t>(layout.shard.numel()), 0.0f);
      GradBuckets buckets(registry, group, o, nullptr, shard.data());
      EXPECT_NE(buckets.bucket_of_layer(2), buckets.bucket_of_layer(3));
      EXPECT_EQ(buckets.bucket_of_layer(1), buckets.bucket_of_layer(2));
      EXPECT_NE(buckets.bucket_of_layer(0), buckets.bucket_of_layer(1));
      // No slot of its own for layer 0's bucket: it is never open all of backward.
      EXPECT_EQ(buckets.num_slots(), overlap ? 2 : 1);
      auto report = [&](int layer, float weight) {
        report_fake(buckets, registry, layer, weight, group.rank());
      };
      for (int pass = 0; pass < 2; ++pass) {
        for (int layer = 2; layer >= 0; --layer) report(layer, 1.0f);  // the head's part
        for (int layer = 5; layer >= 3; --layer) report(layer, 1.0f);
        for (int layer = 2; layer >= 0; --layer) report(layer, 2.0f);  // the embedding's part
        EXPECT_THROW(buckets.ready(0), InvalidArgument);               // a third report
        buckets.drain(/*complete_pass=*/true);
      }
      const std::vector<float> got = shard;
      for (int64_t i = 0; i < layout.shard.numel(); ++i) {
        const int64_t elem = layout.shard.begin + i;
        const bool chunk = elem < registry.layer(3).begin;
        const float want =
            elem >= numel ? 0.0f : (chunk ? 3.0f : 1.0f) * expected_average(elem, group.size(), 2);
        ASSERT_FLOAT_EQ(got[i], want) << "element " << elem;
      }
      // A pass without the embedding's round is incomplete.
      std::vector<float> other(shard.size(), 0.0f);
      GradBuckets half(registry, group, o, nullptr, other.data());
      for (int layer = 5; layer >= 0; --layer) {
        static_cast<float*>(half.grads(layer))[0] += 1.0f;
        half.ready(layer);
      }
      EXPECT_THROW(half.drain(/*complete_pass=*/true), InvalidArgument);
    });
  }
}

// In place (stages 0-1: vocabulary-parallel embeddings are reported twice there too), the
// two rounds add into the same gradients and the bucket is reduced once, after the second:
// averaging twice would be wrong.
TEST(GradBuckets, LayersReportedTwiceInPlaceAreReducedOnceAfterTheLastRound) {
  const ParamRegistry registry = twice_reported_model();
  for (const GradReduction reduction : {GradReduction::AllReduce, GradReduction::ReduceScatter}) {
    parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
      const int64_t numel = registry.numel();
      std::vector<float> full(static_cast<size_t>(numel), 0.0f);
      GradBucketOptions o;
      o.bucket_elems = 32;
      o.reduction = reduction;
      GradBuckets buckets(registry, group, o, full.data(), nullptr);
      auto report = [&](int layer, float weight) {
        report_fake(buckets, registry, layer, weight, group.rank());
      };
      for (int layer = 2; layer >= 0; --layer) report(layer, 1.0f);  // the head's part
      EXPECT_EQ(buckets.reductions_in_flight(), 0);                   // nothing reduced yet
      for (int layer = 5; layer >= 3; --layer) report(layer, 1.0f);
      for (int layer = 2; layer >= 0; --layer) report(layer, 2.0f);  // the embedding's part
      EXPECT_THROW(buckets.ready(0), InvalidArgument);               // a third report
      buckets.drain(/*complete_pass=*/true);
      const ShardRange owned = ShardLayout(numel, group.rank(), group.size()).owned();
      for (int64_t i = 0; i < numel; ++i) {
        if (reduction == GradReduction::ReduceScatter && (i < owned.begin || i >= owned.end)) {
          continue;  // only the rank's own piece is reduced in place
        }
        const bool chunk = i < registry.layer(3).begin;
        ASSERT_FLOAT_EQ(full[i], (chunk ? 3.0f : 1.0f) * expected_average(i, group.size(), 1))
            << "element " << i;
      }
    });
  }
}

}  // namespace
}  // namespace tessera::memory
