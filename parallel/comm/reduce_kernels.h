// Host-memory reduction and conversion loops shared by the thread and MPI backends.
#pragma once

#include <cstddef>
#include <span>

#include "parallel/comm/process_group.h"
#include "runtime/core/dtype.h"

namespace tessera::parallel {

// dst[i] = op(srcs[0][i], srcs[1][i], ...) for i < count, combined in the order given and
// accumulated in f32 for 16-bit types, rounded once at the end. Avg divides the sum by
// avg_divisor. dst may alias any source: each element is read before it is written.
void reduce_into(void* dst, std::span<const void* const> srcs, size_t count, DType dtype,
                 ReduceOp op, int avg_divisor);

// The same reduction written to several destinations (e.g. every rank's copy of one slice):
// each chunk is reduced once, then copied while it is still in cache. Destinations may alias
// sources; all sources of a chunk are read before any destination is written.
void reduce_into_each(std::span<void* const> dsts, std::span<const void* const> srcs, size_t count,
                      DType dtype, ReduceOp op, int avg_divisor);

// Bulk conversions for staging 16-bit data through f32 (dtype: F32, F16 or BF16).
void convert_to_f32(const void* src, float* dst, size_t count, DType dtype);
void convert_from_f32(const float* src, void* dst, size_t count, DType dtype);

// Multiplies in place by 1/divisor exactly as reduce_into's Avg does (a division, not a
// reciprocal multiply, so the backends agree bit for bit).
void divide_f32(float* data, size_t count, int divisor);

}  // namespace tessera::parallel
