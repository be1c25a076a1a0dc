#include "models/recompute.h"

#include <algorithm>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::models {

std::vector<BlockGroup> plan_block_groups(const RecomputePolicy& policy, int num_blocks) {
  TS_CHECK(num_blocks >= 0, "a stage cannot hold {} blocks", num_blocks);
  std::vector<BlockGroup> groups;
  if (num_blocks == 0) return groups;
  if (policy.granularity != RecomputeGranularity::Full) {
    groups.push_back({0, num_blocks, false});
    return groups;
  }
  TS_CHECK(policy.num_layers >= 1,
           "activation_checkpointing: recompute_num_layers must be at least 1, got {}",
           policy.num_layers);
  if (policy.method == RecomputeMethod::Uniform) {
    const int k = policy.number_checkpoints > 0
                      ? (num_blocks + policy.number_checkpoints - 1) / policy.number_checkpoints
                      : policy.num_layers;
    for (int b = 0; b < num_blocks; b += k) groups.push_back({b, std::min(k, num_blocks - b), true});
    return groups;
  }
  const int checkpointed = std::min(policy.num_layers, num_blocks);
  for (int b = 0; b < checkpointed; ++b) groups.push_back({b, 1, true});
  if (checkpointed < num_blocks) groups.push_back({checkpointed, num_blocks - checkpointed, false});
  return groups;
}

std::string granularity_name(RecomputeGranularity g) {
  switch (g) {
    case RecomputeGranularity::None: return "none";
    case RecomputeGranularity::Full: return "full";
    case RecomputeGranularity::Selective: return "selective";
  }
  return "?";
}

std::string describe(const RecomputePolicy& policy, const std::vector<BlockGroup>& groups,
                     bool wide_storage) {
  switch (policy.granularity) {
    case RecomputeGranularity::None:
      return "none: every block keeps its activations";
    case RecomputeGranularity::Selective:
      return wide_storage ? "selective: both LayerNorm outputs and the GELU output recomputed "
                            "in backward, GEMM outputs kept"
                          : "selective: both LayerNorm outputs recomputed in backward, GEMM "
                            "outputs and the 16-bit GELU output kept";
    case RecomputeGranularity::Full: break;
  }
  int recomputed = 0, largest = 0, kept = 0;
  for (const BlockGroup& g : groups) {
    if (g.recompute) ++recomputed, largest = std::max(largest, g.count);
    if (!g.recompute) kept += g.count;
  }
  return fmt::format("full: {} checkpointed group(s) of up to {} block(s), {} block(s) kept{}",
                     recomputed, largest, kept,
                     policy.cpu_checkpointing ? ", checkpoints in host memory" : "");
}

}  // namespace tessera::models
