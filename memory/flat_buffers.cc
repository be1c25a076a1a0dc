#include "memory/flat_buffers.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace tessera::memory {

int64_t padded_numel(int64_t numel, int world, int64_t align) {
  TS_CHECK(world >= 1 && align >= 1, "shard maths needs world >= 1 and align >= 1");
  const int64_t unit = align * world;
  return (numel + unit - 1) / unit * unit;
}

ShardRange shard_range(int64_t numel, int rank, int world, int64_t align) {
  TS_CHECK(rank >= 0 && rank < world, "rank {} outside a world of {}", rank, world);
  const int64_t per_rank = padded_numel(numel, world, align) / world;
  return {per_rank * rank, per_rank * (rank + 1)};
}

ShardRange intersect(ShardRange a, ShardRange b) {
  const int64_t begin = std::max(a.begin, b.begin);
  const int64_t end = std::min(a.end, b.end);
  return begin < end ? ShardRange{begin, end} : ShardRange{begin, begin};
}

ShardLayout::ShardLayout(int64_t model_numel, int this_rank, int world_size)
    : numel(model_numel),
      padded(padded_numel(model_numel, world_size)),
      rank(this_rank),
      world(world_size),
      shard(shard_range(model_numel, this_rank, world_size)) {}

std::vector<size_t> ShardLayout::counts(int64_t begin, int64_t end) const {
  std::vector<size_t> out(world);
  for (int r = 0; r < world; ++r) {
    out[r] = static_cast<size_t>(intersect({begin, end}, shard_range(numel, r, world)).numel());
  }
  return out;
}

FlatState::FlatState(DType dtype, int64_t numel, ShardRange optimizer_range)
    : dtype_(dtype),
      numel_(numel),
      optimizer_range_(optimizer_range),
      params_(numel * dtype_size(dtype), MemCategory::Params),
      grads_(numel * dtype_size(dtype), MemCategory::Grads),
      exp_avg_(optimizer_range.numel() * sizeof(float), MemCategory::Optimizer),
      exp_avg_sq_(optimizer_range.numel() * sizeof(float), MemCategory::Optimizer) {
  check_working_dtype(dtype);
  if (is_16bit(dtype)) {
    master_ = Storage(optimizer_range.numel() * sizeof(float), MemCategory::Optimizer);
  }
}

float* FlatState::master() const {
  if (is_16bit(dtype_)) return static_cast<float*>(master_.data());
  return static_cast<float*>(params_.data()) + optimizer_range_.begin;
}

}  // namespace tessera::memory
