// The 3-D layout of ranks: world = DP x TP x PP in Megatron's order (TP varies fastest, then
// DP, then PP), so tensor-parallel peers are adjacent ranks (same node, fastest links) and
// pipeline stages are the outermost blocks. Each group is built by split() on the world.
#pragma once

#include <vector>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

struct ParallelShape {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int world_size() const { return dp * tp * pp; }
};

struct RankCoords {
  int dp = 0;
  int tp = 0;
  int pp = 0;
  bool operator==(const RankCoords&) const = default;
};

// Pure rank arithmetic, usable without a communicator.
RankCoords coords_of(const ParallelShape& shape, int rank);
int rank_of(const ParallelShape& shape, const RankCoords& coords);
// World ranks of the groups containing `rank`, in group-rank order.
std::vector<int> tp_group_ranks(const ParallelShape& shape, int rank);
std::vector<int> dp_group_ranks(const ParallelShape& shape, int rank);
std::vector<int> pp_group_ranks(const ParallelShape& shape, int rank);

class Topology {
 public:
  // Collective over `world` (three splits); world.size() must equal shape.world_size().
  // `world` is not owned and must outlive the Topology.
  Topology(ProcessGroup& world, ParallelShape shape);

  const ParallelShape& shape() const { return shape_; }
  const RankCoords& coords() const { return coords_; }
  int world_rank() const { return world_->rank(); }

  ProcessGroup& world() const { return *world_; }
  ProcessGroup& tp() const { return *tp_; }
  ProcessGroup& dp() const { return *dp_; }
  ProcessGroup& pp() const { return *pp_; }
  const ProcessGroupPtr& tp_ptr() const { return tp_; }
  const ProcessGroupPtr& dp_ptr() const { return dp_; }
  const ProcessGroupPtr& pp_ptr() const { return pp_; }

  bool is_first_stage() const { return coords_.pp == 0; }
  bool is_last_stage() const { return coords_.pp == shape_.pp - 1; }

 private:
  ProcessGroup* world_;
  ParallelShape shape_;
  RankCoords coords_;
  ProcessGroupPtr tp_;
  ProcessGroupPtr dp_;
  ProcessGroupPtr pp_;
};

}  // namespace tessera::parallel
