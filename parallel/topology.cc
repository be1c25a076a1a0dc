#include "parallel/topology.h"

#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

void check_shape(const ParallelShape& shape) {
  TS_CHECK(shape.dp >= 1 && shape.tp >= 1 && shape.pp >= 1,
           "parallel shape dp={} tp={} pp={}: every degree must be at least 1", shape.dp, shape.tp,
           shape.pp);
}

}  // namespace

RankCoords coords_of(const ParallelShape& shape, int rank) {
  check_shape(shape);
  TS_CHECK(rank >= 0 && rank < shape.world_size(),
           "rank {} is outside a world of {} (dp={} tp={} pp={})", rank, shape.world_size(),
           shape.dp, shape.tp, shape.pp);
  return {(rank / shape.tp) % shape.dp, rank % shape.tp, rank / (shape.tp * shape.dp)};
}

int rank_of(const ParallelShape& shape, const RankCoords& c) {
  check_shape(shape);
  TS_CHECK(
      c.dp >= 0 && c.dp < shape.dp && c.tp >= 0 && c.tp < shape.tp && c.pp >= 0 && c.pp < shape.pp,
      "coordinates dp={} tp={} pp={} are outside the shape dp={} tp={} pp={}", c.dp, c.tp, c.pp,
      shape.dp, shape.tp, shape.pp);
  return c.tp + shape.tp * (c.dp + shape.dp * c.pp);
}

std::vector<int> tp_group_ranks(const ParallelShape& shape, int rank) {
  RankCoords c = coords_of(shape, rank);
  std::vector<int> ranks;
  for (c.tp = 0; c.tp < shape.tp; ++c.tp) ranks.push_back(rank_of(shape, c));
  return ranks;
}

std::vector<int> dp_group_ranks(const ParallelShape& shape, int rank) {
  RankCoords c = coords_of(shape, rank);
  std::vector<int> ranks;
  for (c.dp = 0; c.dp < shape.dp; ++c.dp) ranks.push_back(rank_of(shape, c));
  return ranks;
}

std::vector<int> pp_group_ranks(const ParallelShape& shape, int rank) {
  RankCoords c = coords_of(shape, rank);
  std::vector<int> ranks;
  for (c.pp = 0; c.pp < shape.pp; ++c.pp) ranks.push_back(rank_of(shape, c));
  return ranks;
}

Topology::Topology(ProcessGroup& world, ParallelShape shape) : world_(&world), shape_(shape) {
  TS_CHECK(world_->size() == shape_.world_size(),
           "parallel shape dp={} x tp={} x pp={} needs {} ranks but the world has {}", shape_.dp,
           shape_.tp, shape_.pp, shape_.world_size(), world_->size());
  coords_ = coords_of(shape_, world_->rank());
  const auto& [dp, tp, pp] = coords_;
  // A group's color is the index of the coordinates it does not vary; its key is the one it does.
  tp_ = world_->split(dp + shape_.dp * pp, tp);
  dp_ = world_->split(tp + shape_.tp * pp, dp);
  pp_ = world_->split(tp + shape_.tp * dp, pp);
}

}  // namespace tessera::parallel
