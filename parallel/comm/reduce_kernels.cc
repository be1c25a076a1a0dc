// Reductions stream through a small f32 accumulator that stays in L1, so every source is read
// once, 16-bit inputs are widened once and the destination is written once.
#include "parallel/comm/reduce_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__F16C__) && defined(__AVX__)
#define TESSERA_COMM_HAVE_F16C 1
#else
#define TESSERA_COMM_HAVE_F16C 0
#endif

#include "runtime/core/half.h"
#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

constexpr size_t kChunk = 2048;
// Reductions at least this large write their destinations with non-temporal stores: the
// result does not fit in cache anyway, and skipping the write-allocate read of every
// destination line cuts the memory traffic of a large all-reduce by a third.
constexpr size_t kStreamBytes = size_t{1} << 20;

// dst[0, n) = src[0, n) (f32), bypassing the cache where dst is 64-byte aligned.
void copy_streaming(float* dst, const float* src, size_t n) {
#if defined(__AVX512F__)
  size_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 63) != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, n * sizeof(float));
#endif
}

void load_f16(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
#if TESSERA_COMM_HAVE_F16C
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

void store_f16(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
#if TESSERA_COMM_HAVE_F16C
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
#endif
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

void load_bf16(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void store_bf16(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void load(const void* src, float* dst, size_t n, DType dtype) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::F16:
      load_f16(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::BF16:
      load_bf16(static_cast<const uint16_t*>(src), dst, n);
      return;
    default:
      break;
  }
  TS_THROW(InvalidArgument, "reduction: dtype {} cannot be reduced (use f32, f16 or bf16)",
           dtype_name(dtype));
}

void store(const float* src, void* dst, size_t n, DType dtype) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::F16:
      store_f16(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::BF16:
      store_bf16(src, static_cast<uint16_t*>(dst), n);
      return;
    default:
      break;
  }
  TS_THROW(InvalidArgument, "reduction: dtype {} cannot be reduced (use f32, f16 or bf16)",
           dtype_name(dtype));
}

// acc op= src, with src widened to f32 through `scratch` when it is 16-bit.
void combine(float* acc, const void* src, float* scratch, size_t n, DType dtype, ReduceOp op) {
  const float* x = static_cast<const float*>(src);
  if (dtype != DType::F32) {
    load(src, scratch, n, dtype);
    x = scratch;
  }
  if (op == ReduceOp::Max) {
    for (size_t i = 0; i < n; ++i) acc[i] = std::max(acc[i], x[i]);
  } else {
    for (size_t i = 0; i < n; ++i) acc[i] += x[i];
  }
}

}  // namespace

void divide_f32(float* data, size_t count, int divisor) {
  const float d = static_cast<float>(divisor);
  for (size_t i = 0; i < count; ++i) data[i] /= d;
}

void reduce_into_each(std::span<void* const> dsts, std::span<const void* const> srcs, size_t count,
                      DType dtype, ReduceOp op, int avg_divisor) {
  TS_CHECK(!srcs.empty() || count == 0, "reduce_into: no sources for {} elements", count);
  const size_t elem = dtype_size(dtype);
  alignas(64) float acc[kChunk];
  alignas(64) float scratch[kChunk];
  const bool streaming = dtype == DType::F32 && count * elem >= kStreamBytes;
  for (size_t begin = 0; begin < count; begin += kChunk) {
    const size_t n = std::min(kChunk, count - begin);
    const size_t offset = begin * elem;
    load(static_cast<const char*>(srcs[0]) + offset, acc, n, dtype);
    for (size_t j = 1; j < srcs.size(); ++j) {
      combine(acc, static_cast<const char*>(srcs[j]) + offset, scratch, n, dtype, op);
    }
    if (op == ReduceOp::Avg) divide_f32(acc, n, avg_divisor);
    if (dsts.empty()) continue;
    if (streaming) {
      for (void* d : dsts) copy_streaming(reinterpret_cast<float*>(static_cast<char*>(d) + offset), acc, n);
      continue;
    }
    char* first = static_cast<char*>(dsts[0]) + offset;
    store(acc, first, n, dtype);
    for (size_t k = 1; k < dsts.size(); ++k)
      std::memcpy(static_cast<char*>(dsts[k]) + offset, first, n * elem);
  }
#if defined(__SSE2__)
  // Streaming stores are weakly ordered: fence them before whoever publishes completion.
  if (streaming) _mm_sfence();
#endif
}

void reduce_into(void* dst, std::span<const void* const> srcs, size_t count, DType dtype,
                 ReduceOp op, int avg_divisor) {
  void* const dsts[] = {dst};
  reduce_into_each(dsts, srcs, count, dtype, op, avg_divisor);
}

void convert_to_f32(const void* src, float* dst, size_t count, DType dtype) {
  load(src, dst, count, dtype);
}
void convert_from_f32(const float* src, void* dst, size_t count, DType dtype) {
  store(src, dst, count, dtype);
}

}  // namespace tessera::parallel
