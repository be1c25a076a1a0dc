// Flat buffers for model state and the shard maths over them. Parameters, gradients and
// optimizer moments are each one contiguous allocation in registry order, so a data-parallel
// rank's shard is an offset range [begin, end) and a layer is another.
#pragma once

#include <cstdint>
#include <vector>

#include "memory/precision.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

struct ShardRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t numel() const { return end - begin; }
};

// numel rounded up so that every one of `world` ranks owns the same whole number of
// `align`-element blocks (align keeps shards 64-byte aligned for float).
int64_t padded_numel(int64_t numel, int world, int64_t align = 16);
// The contiguous range rank `rank` owns of a padded buffer of numel elements; ranges of
// consecutive ranks abut, and the last may reach past numel into the padding.
ShardRange shard_range(int64_t numel, int rank, int world, int64_t align = 16);
// Intersection of two ranges (empty when disjoint).
ShardRange intersect(ShardRange a, ShardRange b);

// How `world` ranks split a flat model of numel elements, seen from `rank`: the ZeRO parts
// (gradient buckets, the stage-3 gatherer, the optimizer shard) all cut ranges by it, so
// they agree on who owns which element.
struct ShardLayout {
  ShardLayout(int64_t model_numel, int this_rank, int world_size);
  int64_t numel = 0;
  int64_t padded = 0;  // padded_numel(numel, world)
  int rank = 0, world = 1;
  ShardRange shard;  // shard_range(numel, rank, world): may reach into the padding
  // The shard clipped to the model (may be empty on the last ranks of a tiny model).
  ShardRange owned() const { return intersect(shard, {0, numel}); }
  // [begin, end) of the model intersected with this rank's shard.
  ShardRange piece(int64_t begin, int64_t end) const { return intersect({begin, end}, owned()); }
  // Elements of [begin, end) each rank owns, in rank order: the counts of a reduce_scatter_v
  // or all_gather_v over that range.
  std::vector<size_t> counts(int64_t begin, int64_t end) const;
};

// One rank's replicated model state (ZeRO stage 0): parameters and gradients over the whole
// model in the working dtype (f32, bf16 or f16), and the optimizer's fp32 state over
// `optimizer_range`: the AdamW moments and, when the working dtype is 16-bit, the fp32 master
// weights (12 bytes per parameter, charged to the optimizer as DeepSpeed counts them).
class FlatState {
 public:
  FlatState(DType dtype, int64_t numel, ShardRange optimizer_range);

  DType dtype() const { return dtype_; }
  int64_t numel() const { return numel_; }
  ShardRange optimizer_range() const { return optimizer_range_; }
  void* params() const { return params_.data(); }
  void* grads() const { return grads_.data(); }
  // Indexed from optimizer_range().begin. With f32 working weights the master weights are
  // the parameters themselves.
  float* master() const;
  float* exp_avg() const { return static_cast<float*>(exp_avg_.data()); }
  float* exp_avg_sq() const { return static_cast<float*>(exp_avg_sq_.data()); }
  void zero_grads() { grads_.zero(); }

 private:
  DType dtype_;
  int64_t numel_;
  ShardRange optimizer_range_;
  Storage params_, grads_, master_, exp_avg_, exp_avg_sq_;
};

}  // namespace tessera::memory
