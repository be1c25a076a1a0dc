#include "memory/precision.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::memory {

namespace k = tessera::kernels::cpu;

bool is_16bit(DType dtype) { return dtype == DType::BF16 || dtype == DType::F16; }

void check_working_dtype(DType dtype) {
  TS_CHECK(dtype == DType::F32 || is_16bit(dtype),
           "working precision must be f32, bf16 or f16, not {}", dtype_name(dtype));
}

void store_working(DType dtype, const float* src, void* dst, int64_t n) {
  check_working_dtype(dtype);
  if (n <= 0) return;
  if (dtype == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    k::to_16(dtype, src, static_cast<uint16_t*>(dst), n);
  }
}

void load_working(DType dtype, const void* src, float* dst, int64_t n) {
  check_working_dtype(dtype);
  if (n <= 0) return;
  if (dtype == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    k::from_16(dtype, static_cast<const uint16_t*>(src), dst, n);
  }
}

void accumulate_working(DType dtype, void* dst, const void* src, int64_t n) {
  check_working_dtype(dtype);
  if (n <= 0) return;
  if (dtype == DType::F32) {
    float* d = static_cast<float*>(dst);
    const float* s = static_cast<const float*>(src);
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
    return;
  }
  // Widen a block of src, then add it into dst in fp32 with one rounding.
  constexpr int64_t kBlock = int64_t{1} << 16;
  std::vector<float> wide(static_cast<size_t>(std::min(n, kBlock)));
  auto* d = static_cast<uint16_t*>(dst);
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t at = 0; at < n; at += kBlock) {
    const int64_t len = std::min(kBlock, n - at);
    k::from_16(dtype, s + at, wide.data(), len);
    k::accumulate_16(dtype, d + at, wide.data(), len);
  }
}

}  // namespace tessera::memory
