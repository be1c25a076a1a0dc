// CPU conversions between f32 and the 16-bit training formats (bf16, f16), and the
// non-finite scan that mixed precision runs over every gradient shard before a step.
//
// Every conversion is bit-exact with the scalar reference in runtime/core/half.h
// (round-to-nearest-even, NaN stays a NaN with its sign, overflow goes to infinity,
// subnormals kept), whichever instruction set does the work, with one exception: the vector
// f16 -> f32 paths (F16C) quiet a signalling NaN, which half.h leaves signalling. The vector paths are compiled
// with per-function target attributes and picked at run time from what the CPU reports, so
// one binary runs on any x86-64; large arrays are split across the OpenMP pool.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// The instruction sets a conversion can run on, weakest first.
enum class ConvertPath {
  Scalar,      // runtime/core/half.h, one element at a time
  Avx2F16c,    // 8 lanes; F16C for f16, integer rounding for bf16
  Avx512,      // 16 lanes (AVX-512 F + BW); integer rounding for bf16
  Avx512Bf16,  // as Avx512, with vcvtneps2bf16 for f32 -> bf16
};

const char* convert_path_name(ConvertPath path);
// The strongest path this CPU (and OS) supports; checked once.
ConvertPath best_convert_path();
// Whether `path` can run here. Passing a path that cannot to a function below throws
// InvalidArgument rather than dying on an illegal instruction.
bool convert_path_supported(ConvertPath path);

// dst[i] = src[i] converted, i in [0, n). `path` exists for tests and benchmarks; callers
// leave the default.
void f32_to_bf16(const float* src, uint16_t* dst, int64_t n,
                 ConvertPath path = best_convert_path());
void bf16_to_f32(const uint16_t* src, float* dst, int64_t n,
                 ConvertPath path = best_convert_path());
void f32_to_f16(const float* src, uint16_t* dst, int64_t n,
                ConvertPath path = best_convert_path());
void f16_to_f32(const uint16_t* src, float* dst, int64_t n,
                ConvertPath path = best_convert_path());

// Whether any of x[0, n) is an infinity or a NaN: the loss scaler's overflow test. Bit tests
// on the exponent field, so the answer does not depend on floating-point compiler flags.
bool has_nonfinite(const float* x, int64_t n, ConvertPath path = best_convert_path());
bool has_nonfinite_bf16(const uint16_t* x, int64_t n, ConvertPath path = best_convert_path());
bool has_nonfinite_f16(const uint16_t* x, int64_t n, ConvertPath path = best_convert_path());

}  // namespace tessera::kernels::cpu
