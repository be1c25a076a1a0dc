// Layer partitioning (parallel/pp/partition.h): uniform sizes as DeepSpeed's, balanced splits
// checked against brute force on small inputs and on a GPT-2 cost profile whose first block
// carries the embeddings, explicit lists and partition_method strings refused with the
// numbers and the fix.
#include "parallel/pp/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "tests/common/expect_invalid.h"
#include "runtime/core/error.h"

namespace tessera::parallel::pp {
namespace {

using Bounds = std::vector<int>;

using tessera::test::expect_invalid;

std::vector<int64_t> part_costs(const std::vector<int64_t>& costs, const Bounds& b) {
  std::vector<int64_t> out;
  for (size_t i = 0; i + 1 < b.size(); ++i) {
    int64_t sum = 0;
    for (int j = b[i]; j < b[i + 1]; ++j) sum += costs[j];
    out.push_back(sum);
  }
  return out;
}

TEST(Partition, UniformPutsTheLargerPartsFirst) {
  EXPECT_EQ(partition_uniform(10, 4), (Bounds{0, 3, 6, 8, 10}));
  EXPECT_EQ(partition_uniform(8, 4), (Bounds{0, 2, 4, 6, 8}));
  EXPECT_EQ(partition_uniform(5, 5), (Bounds{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(partition_uniform(7, 1), (Bounds{0, 7}));
  for (int n = 1; n <= 40; ++n) {
    for (int parts = 1; parts <= n; ++parts) {
      const Bounds b = partition_uniform(n, parts);
      ASSERT_EQ(b.size(), static_cast<size_t>(parts + 1));
      EXPECT_EQ(b.front(), 0);
      EXPECT_EQ(b.back(), n);
      for (int i = 0; i < parts; ++i) {
        const int size = b[i + 1] - b[i];
        EXPECT_TRUE(size == n / parts || size == n / parts + 1) << n << " " << parts;
        if (i > 0) {
          EXPECT_LE(size, b[i] - b[i - 1]) << n << " " << parts;
        }
      }
    }
  }
}

TEST(Partition, TooManyStagesNameTheNumbers) {
  expect_invalid([] { partition_uniform(6, 8); },
                 "pipeline_model_parallel_size x virtual size = 8 stages need at least 8 "
                 "transformer blocks, the model has 6: use fewer stages");
  const std::vector<int64_t> costs(3, 1);
  expect_invalid([&] { partition_balanced(costs, 4); }, "the model has 3");
  expect_invalid([] { partition_uniform(6, 0); }, "at least one part, got 0");
  const std::vector<int64_t> negative{1, -2, 3};
  expect_invalid([&] { partition_balanced(negative, 2); }, "block 1 has cost -2");
}

TEST(Partition, BalancedGivesHeavyEndsTheirOwnStages) {
  // 12 unit blocks, the embedding added to the first and the head to the last.
  std::vector<int64_t> costs(12, 1);
  costs.front() += 3;
  costs.back() += 3;
  // Largest part 5 (of 18 in all); costs 4 4 5 5 and 4 5 5 4 are equally even: the earliest
  // boundaries win.
  EXPECT_EQ(partition_balanced(costs, 4), (Bounds{0, 1, 5, 10, 12}));
  // GPT-2 124M: 7,087,872 parameters a block; wte and wpe (39,383,808) on block 0, the final
  // LayerNorm (1,536) on block 11 (the head is tied to wte). Block 0 alone is the heaviest
  // part; the other 11 blocks split 4, 4, 3 with the final LayerNorm on the 3.
  std::vector<int64_t> gpt2(12, 7'087'872);
  gpt2.front() += 39'383'808;
  gpt2.back() += 1'536;
  EXPECT_EQ(partition_balanced(gpt2, 4), (Bounds{0, 1, 5, 9, 12}));
  // Equal costs: the most even split, smaller parts first (the earliest boundaries).
  const std::vector<int64_t> equal(10, 5);
  EXPECT_EQ(partition_balanced(equal, 4), (Bounds{0, 2, 4, 7, 10}));
  // Free blocks (cost 0) still get a stage each when needed.
  const std::vector<int64_t> zeros(4, 0);
  EXPECT_EQ(partition_balanced(zeros, 4), (Bounds{0, 1, 2, 3, 4}));
}

TEST(Partition, BalancedMatchesBruteForce) {
  std::mt19937 rng(7);
  for (int n = 1; n <= 9; ++n) {
    for (int parts = 1; parts <= n; ++parts) {
      for (int trial = 0; trial < 6; ++trial) {
        std::vector<int64_t> costs(n);
        for (int64_t& c : costs) c = std::uniform_int_distribution<int>(0, 9)(rng);
        // Every choice of parts - 1 cut points among 1..n-1, best by (largest part, sum of
        // squares, boundaries).
        std::tuple<int64_t, int64_t, Bounds> best{INT64_MAX, 0, {}};
        for (int mask = 0; mask < (1 << (n - 1)); ++mask) {
          if (__builtin_popcount(mask) != parts - 1) continue;
          Bounds b{0};
          for (int i = 1; i < n; ++i) {
            if (mask & (1 << (i - 1))) b.push_back(i);
          }
          b.push_back(n);
          const std::vector<int64_t> pc = part_costs(costs, b);
          int64_t sq = 0;
          for (int64_t c : pc) sq += c * c;
          best = std::min(best, std::tuple{*std::max_element(pc.begin(), pc.end()), sq, b});
        }
        EXPECT_EQ(partition_balanced(costs, parts), std::get<2>(best))
            << "n=" << n << " parts=" << parts << " trial " << trial;
      }
    }
  }
}

TEST(Partition, ExplicitSizesAreChecked) {
  const std::vector<int> sizes{3, 3, 2, 2};
  EXPECT_EQ(partition_explicit(sizes, 10), (Bounds{0, 3, 6, 8, 10}));
  expect_invalid([&] { partition_explicit(sizes, 12); },
                 "partition_method 3,3,2,2 covers 10 transformer blocks, the model has 12: the "
                 "sizes must add up to 12");
  const std::vector<int> empty_part{3, 0, 7};
  expect_invalid([&] { partition_explicit(empty_part, 10); },
                 "part 1 has 0 transformer blocks, every part needs at least 1");
  expect_invalid([] { partition_explicit({}, 10); }, "at least one part size");
}

TEST(Partition, ParsesPartitionMethod) {
  using K = PartitionMethod::Kind;
  EXPECT_EQ(parse_partition_method("uniform").kind, K::Uniform);
  EXPECT_EQ(parse_partition_method(" Parameters ").kind, K::Parameters);
  const PartitionMethod m = parse_partition_method("3, 3,2 ,2");
  EXPECT_EQ(m.kind, K::Explicit);
  EXPECT_EQ(m.sizes, (std::vector<int>{3, 3, 2, 2}));
  for (const char* bad : {"", "type:transformer", "3,,2", "3,2,", "-1,2", "profile"}) {
    expect_invalid([&] { parse_partition_method(bad); },
                   "use uniform, parameters, or the transformer blocks of each stage such as "
                   "3,3,2,2");
  }
  std::vector<int64_t> costs(10, 1);
  costs[0] = 9;
  EXPECT_EQ(partition(parse_partition_method("uniform"), costs, 4), partition_uniform(10, 4));
  EXPECT_EQ(partition(parse_partition_method("parameters"), costs, 4),
            partition_balanced(costs, 4));
  EXPECT_EQ(partition(m, costs, 4), (Bounds{0, 3, 6, 8, 10}));
  expect_invalid([&] { partition(m, costs, 2); },
                 "partition_method 3,3,2,2 lists 4 stages, the pipeline has 2");
}

}  // namespace
}  // namespace tessera::parallel::pp
