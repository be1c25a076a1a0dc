// The working precision of parameters and gradients (f32, or bf16 / f16 beside fp32 master
// weights) and the few element-wise moves model state makes in it.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.h"

namespace tessera::memory {

// Whether dtype is one of the 16-bit training formats (bf16, f16).
bool is_16bit(DType dtype);
// Throws InvalidArgument unless dtype is a working precision: f32, bf16 or f16.
void check_working_dtype(DType dtype);

// dst[0, n) (working dtype) = src (f32), rounded to nearest even when 16-bit.
void store_working(DType dtype, const float* src, void* dst, int64_t n);
// dst[0, n) (working dtype) = widen(src).
void load_working(DType dtype, const void* src, float* dst, int64_t n);
// dst[i] += src[i], both of the working dtype; 16-bit sums are formed in fp32 and rounded
// once, so adding a zero buffer leaves dst's bits unchanged.
void accumulate_working(DType dtype, void* dst, const void* src, int64_t n);

}  // namespace tessera::memory
