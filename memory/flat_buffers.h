// Flat buffers for model state and the shard maths over them. Parameters, gradients and
// optimizer moments are each one contiguous allocation in registry order, so a data-parallel
// rank's shard is an offset range [begin, end) and a layer is another.
#pragma once

#include <cstdint>

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

// One rank's model state in element type T: parameters and gradients over the whole model,
// AdamW moments over `optimizer_range` (the whole model at ZeRO stage 0).
template <typename T>
class FlatState {
 public:
  FlatState(int64_t numel, ShardRange optimizer_range);

  int64_t numel() const { return numel_; }
  ShardRange optimizer_range() const { return optimizer_range_; }
  T* params() const { return static_cast<T*>(params_.data()); }
  T* grads() const { return static_cast<T*>(grads_.data()); }
  // Moments are indexed from optimizer_range().begin.
  T* exp_avg() const { return static_cast<T*>(exp_avg_.data()); }
  T* exp_avg_sq() const { return static_cast<T*>(exp_avg_sq_.data()); }
  void zero_grads() { grads_.zero(); }

 private:
  int64_t numel_;
  ShardRange optimizer_range_;
  Storage params_, grads_, exp_avg_, exp_avg_sq_;
};

}  // namespace tessera::memory
