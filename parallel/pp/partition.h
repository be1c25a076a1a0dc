// Which transformer blocks each pipeline stage holds: pure functions that split n consecutive
// blocks into `parts` contiguous, non-empty parts, given as parts + 1 boundaries
// (0 = b[0] < b[1] < ... < b[parts] = n; part i holds blocks b[i] .. b[i+1] - 1). Under the
// interleaved schedule the parts are the virtual stages, p x v of them, in virtual-stage order
// (see schedule.h). The caller decides what a block costs: to balance memory it adds the
// embedding (and, untied, the head) to the first (last) block's parameter count.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tessera::parallel::pp {

// Sizes differ by at most 1, the larger parts first (as DeepSpeed's uniform method): 10 blocks
// in 4 parts are 3, 3, 2, 2.
std::vector<int> partition_uniform(int items, int parts);

// Minimises the largest part's total cost (exactly: binary search on the bound, greedy check).
// Among the partitions that reach it, the most even (least sum of squared part costs); ties go
// to the earliest boundaries. Costs must be >= 0.
std::vector<int> partition_balanced(std::span<const int64_t> costs, int parts);

// Given part sizes, e.g. {3, 3, 2, 2}: each >= 1 and summing to `items`.
std::vector<int> partition_explicit(std::span<const int> sizes, int items);

// DeepSpeed-like partition_method: "uniform" (the same number of blocks per stage),
// "parameters" (balanced on each block's parameter count) or an explicit list of blocks per
// stage, "3,3,2,2". Case and spaces do not matter.
struct PartitionMethod {
  enum class Kind { Uniform, Parameters, Explicit };
  Kind kind = Kind::Uniform;
  std::vector<int> sizes;  // Explicit: blocks per part
};
PartitionMethod parse_partition_method(const std::string& text);

// The boundaries `method` gives for costs.size() blocks in `parts` parts (an explicit list
// must have `parts` entries).
std::vector<int> partition(const PartitionMethod& method, std::span<const int64_t> costs,
                           int parts);

}  // namespace tessera::parallel::pp
