// f32 <-> bf16 / f16 conversion and the non-finite scan (cpu_convert.h). Each operation has a
// scalar form (half.h) and vector forms compiled with target attributes; best_convert_path()
// picks one from CPUID at run time, so the library runs on CPUs without AVX-512 or even AVX2
// whatever flags it was built with (when TESSERA_NATIVE is off).
//
// Bit-exactness notes:
// - vcvtneps2bf16 rounds to nearest even and quiets NaNs exactly like half.h, but treats f32
//   subnormal inputs as zero. Vectors holding a subnormal (rare: below 1.2e-38) take the
//   scalar reference instead, so the result never depends on the CPU.
// - vcvtps2ph with _MM_FROUND_TO_NEAREST_INT ignores MXCSR and matches half.h everywhere,
//   subnormal halves included. vcvtph2ps is exact but quiets a signalling NaN (sets f32 bit
//   22), which half.h's f16_to_f32 does not: the one place the paths differ, NaN either way.
// - The integer bf16 rounding adds 0x7fff plus the lowest kept bit, as half.h does.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/kernels/cpu_convert.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics start from a self-initialised _mm512_undefined_*() and, inlined
// into target-attributed functions, raise false -Wmaybe-uninitialized warnings at the
// header's lines (GCC PR 105593, fixed in 13); silence them for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define TESSERA_CONVERT_X86 1
#define TESSERA_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#define TESSERA_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define TESSERA_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#include "runtime/kernels/cpu/bf16_round.h"
#else
#define TESSERA_CONVERT_X86 0
#endif

namespace tessera::kernels::cpu {
namespace {

// One OpenMP task's share: large enough that the fork costs nothing against the memory
// traffic (64 Ki elements = 256 KiB of f32), a multiple of every vector width so only the
// last block has a tail.
constexpr int64_t kBlock = int64_t{1} << 16;
// Below this a single core is faster than waking the pool (a 1 MiB f32 array).
constexpr int64_t kParallelMin = int64_t{1} << 18;

// Infinity and NaN are exactly the values whose magnitude bits reach the all-ones exponent.
constexpr uint32_t kF32ExponentMask = 0x7f800000u;
constexpr uint16_t kBf16ExponentMask = 0x7f80u;
constexpr uint16_t kF16ExponentMask = 0x7c00u;

// ---- scalar (the reference) ----

void f32_to_bf16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tessera::f32_to_bf16(src[i]);
}
void bf16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tessera::bf16_to_f32(src[i]);
}
void f32_to_f16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tessera::f32_to_f16(src[i]);
}
void f16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tessera::f16_to_f32(src[i]);
}
// A running maximum instead of an early return keeps the loop branch-free.
bool has_nonfinite_f32_scalar(const float* x, int64_t n) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    largest = std::max(largest, bits & 0x7fffffffu);
  }
  return largest >= kF32ExponentMask;
}
bool has_nonfinite_16_scalar(const uint16_t* x, int64_t n, uint16_t exponent_mask) {
  uint16_t largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::max<uint16_t>(largest, x[i] & 0x7fffu);
  return largest >= exponent_mask;
}
bool has_nonfinite_bf16_scalar(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_scalar(x, n, kBf16ExponentMask);
}
bool has_nonfinite_f16_scalar(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_scalar(x, n, kF16ExponentMask);
}

#if TESSERA_CONVERT_X86

// ---- AVX2 + F16C: 8 lanes, scalar tails ----

TESSERA_TARGET_AVX2 void f32_to_bf16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i lo = bf16_round_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    const __m256i hi =
        bf16_round_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8)));
    // packus works per 128-bit lane (lo0-3 hi0-3 lo4-7 hi4-7); the permute restores order.
    // The values are <= 0xffff, so the unsigned saturation never bites.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), packed);
  }
  f32_to_bf16_scalar(src + i, dst + i, n - i);
}

TESSERA_TARGET_AVX2 void bf16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(wide, 16));
  }
  bf16_to_f32_scalar(src + i, dst + i, n - i);
}

TESSERA_TARGET_AVX2 void f32_to_f16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  f32_to_f16_scalar(src + i, dst + i, n - i);
}

TESSERA_TARGET_AVX2 void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  f16_to_f32_scalar(src + i, dst + i, n - i);
}

TESSERA_TARGET_AVX2 bool has_nonfinite_f32_avx2(const float* x, int64_t n) {
  const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
  __m256i largest = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    largest = _mm256_max_epu32(largest, _mm256_and_si256(u, magnitude_mask));
  }
  const __m256i hit = _mm256_cmpgt_epi32(largest, _mm256_set1_epi32(0x7f7fffff));
  return _mm256_movemask_epi8(hit) != 0 || has_nonfinite_f32_scalar(x + i, n - i);
}

TESSERA_TARGET_AVX2 bool has_nonfinite_16_avx2(const uint16_t* x, int64_t n,
                                               uint16_t exponent_mask) {
  const __m256i magnitude_mask = _mm256_set1_epi16(0x7fff);
  __m256i largest = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    largest = _mm256_max_epu16(largest, _mm256_and_si256(h, magnitude_mask));
  }
  // No unsigned 16-bit compare in AVX2: largest >= mask exactly where max(largest, mask)
  // equals largest.
  const __m256i threshold = _mm256_set1_epi16(static_cast<short>(exponent_mask));
  const __m256i hit = _mm256_cmpeq_epi16(_mm256_max_epu16(largest, threshold), largest);
  return _mm256_movemask_epi8(hit) != 0 || has_nonfinite_16_scalar(x + i, n - i, exponent_mask);
}
TESSERA_TARGET_AVX2 bool has_nonfinite_bf16_avx2(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_avx2(x, n, kBf16ExponentMask);
}
TESSERA_TARGET_AVX2 bool has_nonfinite_f16_avx2(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_avx2(x, n, kF16ExponentMask);
}

// ---- AVX-512 (F, BW, VL): 16 lanes, tails with masked loads and stores ----

TESSERA_TARGET_AVX512 inline __mmask16 tail_mask16(int64_t remaining) {
  return static_cast<__mmask16>((1u << remaining) - 1u);
}
TESSERA_TARGET_AVX512 inline __mmask32 tail_mask32(int64_t remaining) {
  return static_cast<__mmask32>((uint64_t{1} << remaining) - 1u);
}

TESSERA_TARGET_AVX512 void f32_to_bf16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_loadu_si512(src + i);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtepi32_epi16(bf16_round_avx512(u)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
    _mm512_mask_cvtepi32_storeu_epi16(dst + i, m, bf16_round_avx512(u));
  }
}

TESSERA_TARGET_AVX512 void bf16_to_f32_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_si512(dst + i, _mm512_slli_epi32(wide, 16));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(wide, 16));
  }
}

TESSERA_TARGET_AVX512 void f32_to_f16_avx512(const float* src, uint16_t* dst, int64_t n) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRound));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), kRound));
  }
}

TESSERA_TARGET_AVX512 void f16_to_f32_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i,
                     _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

// Masked-off lanes load as zero, which is finite, so tails need no special case.
TESSERA_TARGET_AVX512 bool has_nonfinite_f32_avx512(const float* x, int64_t n) {
  const __m512i magnitude_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i largest = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    largest = _mm512_max_epu32(largest, _mm512_and_si512(_mm512_loadu_si512(x + i), magnitude_mask));
  }
  if (i < n) {
    const __m512i u = _mm512_maskz_loadu_epi32(tail_mask16(n - i), x + i);
    largest = _mm512_max_epu32(largest, _mm512_and_si512(u, magnitude_mask));
  }
  return _mm512_cmpge_epu32_mask(largest, _mm512_set1_epi32(kF32ExponentMask)) != 0;
}

TESSERA_TARGET_AVX512 bool has_nonfinite_16_avx512(const uint16_t* x, int64_t n,
                                                   uint16_t exponent_mask) {
  const __m512i magnitude_mask = _mm512_set1_epi16(0x7fff);
  __m512i largest = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    largest = _mm512_max_epu16(largest, _mm512_and_si512(_mm512_loadu_si512(x + i), magnitude_mask));
  }
  if (i < n) {
    const __m512i h = _mm512_maskz_loadu_epi16(tail_mask32(n - i), x + i);
    largest = _mm512_max_epu16(largest, _mm512_and_si512(h, magnitude_mask));
  }
  const __m512i threshold = _mm512_set1_epi16(static_cast<short>(exponent_mask));
  return _mm512_cmpge_epu16_mask(largest, threshold) != 0;
}
TESSERA_TARGET_AVX512 bool has_nonfinite_bf16_avx512(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_avx512(x, n, kBf16ExponentMask);
}
TESSERA_TARGET_AVX512 bool has_nonfinite_f16_avx512(const uint16_t* x, int64_t n) {
  return has_nonfinite_16_avx512(x, n, kF16ExponentMask);
}

// ---- AVX512_BF16: hardware rounding for f32 -> bf16 ----

// Lanes whose f32 input is subnormal: there vcvtneps2bf16 returns zero instead of rounding.
TESSERA_TARGET_AVX512BF16 inline __mmask16 subnormal_lanes(__m512i u) {
  const __mmask16 zero_exponent =
      _mm512_testn_epi32_mask(u, _mm512_set1_epi32(static_cast<int>(kF32ExponentMask)));
  return _mm512_mask_test_epi32_mask(zero_exponent, u, _mm512_set1_epi32(0x007fffff));
}

TESSERA_TARGET_AVX512BF16 void f32_to_bf16_avx512bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  // Two vectors per instruction: vcvtne2ps2bf16 puts its second operand in the low half.
  // Vectors holding a subnormal go through the reference instead; they are too rare to matter.
  for (; i + 32 <= n; i += 32) {
    const __m512i lo = _mm512_loadu_si512(src + i);
    const __m512i hi = _mm512_loadu_si512(src + i + 16);
    if ((subnormal_lanes(lo) | subnormal_lanes(hi)) != 0) [[unlikely]] {
      f32_to_bf16_scalar(src + i, dst + i, 32);
      continue;
    }
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_castsi512_ps(hi), _mm512_castsi512_ps(lo));
    std::memcpy(dst + i, &h, sizeof h);
  }
  for (; i < n; i += 16) {
    const int64_t count = std::min<int64_t>(16, n - i);
    const __mmask16 m = tail_mask16(count);
    const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
    if (subnormal_lanes(u) != 0) [[unlikely]] {
      f32_to_bf16_scalar(src + i, dst + i, count);
      continue;
    }
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_castsi512_ps(u));
    __m256i bits;
    std::memcpy(&bits, &h, sizeof bits);
    _mm256_mask_storeu_epi16(dst + i, m, bits);
  }
}

#endif  // TESSERA_CONVERT_X86

ConvertPath detect_convert_path() {
#if TESSERA_CONVERT_X86
  __builtin_cpu_init();
  // libgcc also checks XCR0, so these are false when the OS does not save the wider registers.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return __builtin_cpu_supports("avx512bf16") ? ConvertPath::Avx512Bf16 : ConvertPath::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return ConvertPath::Avx2F16c;
#endif
  return ConvertPath::Scalar;
}

void check_arguments(const char* op, int64_t n, ConvertPath path) {
  TS_CHECK(n >= 0, "{}: negative length {}", op, n);
  TS_CHECK(convert_path_supported(path),
           "{}: this CPU cannot run the {} path (best here: {}); leave the path argument out",
           op, convert_path_name(path), convert_path_name(best_convert_path()));
}

// The kernel for `path`; paths without a kernel of their own use the next weaker one
// (bf16 hardware rounding only changes f32 -> bf16).
template <typename Kernel>
Kernel pick(ConvertPath path, Kernel scalar, Kernel avx2, Kernel avx512, Kernel avx512bf16) {
  switch (path) {
    case ConvertPath::Avx512Bf16:
      return avx512bf16 ? avx512bf16 : avx512;
    case ConvertPath::Avx512:
      return avx512;
    case ConvertPath::Avx2F16c:
      return avx2;
    case ConvertPath::Scalar:
      break;
  }
  return scalar;
}

template <typename Src, typename Dst>
void convert_blocks(void (*kernel)(const Src*, Dst*, int64_t), const Src* src, Dst* dst,
                    int64_t n) {
  if (n < kParallelMin || omp_in_parallel()) {
    kernel(src, dst, n);
    return;
  }
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    kernel(src + begin, dst + begin, std::min(kBlock, n - begin));
  }
}

template <typename T>
bool scan_blocks(bool (*kernel)(const T*, int64_t), const T* x, int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  if (n < kParallelMin || omp_in_parallel()) {
    // Block by block, so a hit near the front ends the scan early.
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      if (kernel(x + begin, std::min(kBlock, n - begin))) return true;
    }
    return false;
  }
  bool found = false;
#pragma omp parallel for schedule(static) reduction(|| : found)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    found = found || kernel(x + begin, std::min(kBlock, n - begin));
  }
  return found;
}

#if TESSERA_CONVERT_X86
#define TESSERA_VECTOR_KERNELS(avx2, avx512, avx512bf16) avx2, avx512, avx512bf16
#else
#define TESSERA_VECTOR_KERNELS(avx2, avx512, avx512bf16) nullptr, nullptr, nullptr
#endif

}  // namespace

const char* convert_path_name(ConvertPath path) {
  switch (path) {
    case ConvertPath::Scalar:
      return "scalar";
    case ConvertPath::Avx2F16c:
      return "avx2+f16c";
    case ConvertPath::Avx512:
      return "avx512";
    case ConvertPath::Avx512Bf16:
      return "avx512+bf16";
  }
  return "unknown";
}

ConvertPath best_convert_path() {
  static const ConvertPath best = detect_convert_path();
  return best;
}

bool convert_path_supported(ConvertPath path) {
  return static_cast<int>(path) <= static_cast<int>(best_convert_path());
}

void f32_to_bf16(const float* src, uint16_t* dst, int64_t n, ConvertPath path) {
  check_arguments("f32_to_bf16", n, path);
  convert_blocks(pick<void (*)(const float*, uint16_t*, int64_t)>(
                     path, f32_to_bf16_scalar,
                     TESSERA_VECTOR_KERNELS(f32_to_bf16_avx2, f32_to_bf16_avx512,
                                            f32_to_bf16_avx512bf16)),
                 src, dst, n);
}

void bf16_to_f32(const uint16_t* src, float* dst, int64_t n, ConvertPath path) {
  check_arguments("bf16_to_f32", n, path);
  convert_blocks(pick<void (*)(const uint16_t*, float*, int64_t)>(
                     path, bf16_to_f32_scalar,
                     TESSERA_VECTOR_KERNELS(bf16_to_f32_avx2, bf16_to_f32_avx512, nullptr)),
                 src, dst, n);
}

void f32_to_f16(const float* src, uint16_t* dst, int64_t n, ConvertPath path) {
  check_arguments("f32_to_f16", n, path);
  convert_blocks(pick<void (*)(const float*, uint16_t*, int64_t)>(
                     path, f32_to_f16_scalar,
                     TESSERA_VECTOR_KERNELS(f32_to_f16_avx2, f32_to_f16_avx512, nullptr)),
                 src, dst, n);
}

void f16_to_f32(const uint16_t* src, float* dst, int64_t n, ConvertPath path) {
  check_arguments("f16_to_f32", n, path);
  convert_blocks(pick<void (*)(const uint16_t*, float*, int64_t)>(
                     path, f16_to_f32_scalar,
                     TESSERA_VECTOR_KERNELS(f16_to_f32_avx2, f16_to_f32_avx512, nullptr)),
                 src, dst, n);
}

bool has_nonfinite(const float* x, int64_t n, ConvertPath path) {
  check_arguments("has_nonfinite", n, path);
  return scan_blocks(pick<bool (*)(const float*, int64_t)>(
                         path, has_nonfinite_f32_scalar,
                         TESSERA_VECTOR_KERNELS(has_nonfinite_f32_avx2, has_nonfinite_f32_avx512,
                                                nullptr)),
                     x, n);
}

bool has_nonfinite_bf16(const uint16_t* x, int64_t n, ConvertPath path) {
  check_arguments("has_nonfinite_bf16", n, path);
  return scan_blocks(pick<bool (*)(const uint16_t*, int64_t)>(
                         path, has_nonfinite_bf16_scalar,
                         TESSERA_VECTOR_KERNELS(has_nonfinite_bf16_avx2,
                                                has_nonfinite_bf16_avx512, nullptr)),
                     x, n);
}

bool has_nonfinite_f16(const uint16_t* x, int64_t n, ConvertPath path) {
  check_arguments("has_nonfinite_f16", n, path);
  return scan_blocks(pick<bool (*)(const uint16_t*, int64_t)>(
                         path, has_nonfinite_f16_scalar,
                         TESSERA_VECTOR_KERNELS(has_nonfinite_f16_avx2,
                                                has_nonfinite_f16_avx512, nullptr)),
                     x, n);
}

}  // namespace tessera::kernels::cpu
