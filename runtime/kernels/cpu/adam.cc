// adamw_update (cpu_kernels.h) and its f32 vector paths (cpu_adam.h). The update is bound by
// memory traffic (28 bytes per f32 parameter: p, g, m, v read, p, m, v written), so the
// vector paths exist to keep the divisions and square roots off the critical path: the
// compiler leaves the plain loop scalar, because std::sqrt may set errno.
#include <omp.h>

#include <algorithm>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/kernels/cpu/shared_steps.h"
#include "runtime/kernels/cpu_adam.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers raise false -Wmaybe-uninitialized warnings inside target-attributed
// functions (GCC PR 105593); silence them for the header only, as convert.cc does.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define TESSERA_ADAM_X86 1
#define TESSERA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TESSERA_TARGET_AVX512 __attribute__((target("avx512f")))
#include "runtime/kernels/cpu/bf16_round.h"
#else
#define TESSERA_ADAM_X86 0
#endif

namespace tessera::kernels::cpu {
namespace {

// One OpenMP task's share: 64 Ki elements (1 MiB of the four arrays), a multiple of every
// vector width so only the last block has a tail.
constexpr int64_t kBlock = int64_t{1} << 16;
// Below this one core is faster than waking the pool.
constexpr int64_t kParallelMin = int64_t{1} << 17;

using Kernel = void (*)(const AdamWStep<float>&, float*, const float*, float*, float*, int64_t);

void adamw_scalar(const AdamWStep<float>& s, float* p, const float* g, float* m, float* v,
                  int64_t n) {
  for (int64_t i = 0; i < n; ++i) s.update(p[i], g[i], m[i], v[i]);
}

void adamw_bf16_scalar(const AdamWStep<float>& s, float* p, uint16_t* p16, const uint16_t* g16,
                       float* m, float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    s.update(p[i], tessera::bf16_to_f32(g16[i]), m[i], v[i]);
    p16[i] = tessera::f32_to_bf16(p[i]);
  }
}

#if TESSERA_ADAM_X86

// The vector bodies spell out AdamWStep::update lane by lane; the tails call it directly.
// AdamWStep's constants in 8 lanes and its update of one vector, for both AVX2 kernels.
struct Avx2Step {
  __m256 gs, l2, b1, one_minus_b1, b2, one_minus_b2, bias1, bias2, eps, wd, neg_lr;

  TESSERA_TARGET_AVX2 explicit Avx2Step(const AdamWStep<float>& s)
      : gs(_mm256_set1_ps(s.gs)),
        l2(_mm256_set1_ps(s.l2)),
        b1(_mm256_set1_ps(s.b1)),
        one_minus_b1(_mm256_set1_ps(1.0f - s.b1)),
        b2(_mm256_set1_ps(s.b2)),
        one_minus_b2(_mm256_set1_ps(1.0f - s.b2)),
        bias1(_mm256_set1_ps(s.bias1)),
        bias2(_mm256_set1_ps(s.bias2)),
        eps(_mm256_set1_ps(s.eps)),
        wd(_mm256_set1_ps(s.wd)),
        neg_lr(_mm256_set1_ps(-s.lr)) {}

  // Updates m[0, 8) and v[0, 8) and returns the new parameters.
  TESSERA_TARGET_AVX2 __m256 update(__m256 param, __m256 g, float* m, float* v) const {
    const __m256 grad = _mm256_fmadd_ps(g, gs, _mm256_mul_ps(l2, param));
    const __m256 mi = _mm256_fmadd_ps(b1, _mm256_loadu_ps(m), _mm256_mul_ps(one_minus_b1, grad));
    const __m256 vi = _mm256_fmadd_ps(b2, _mm256_loadu_ps(v),
                                      _mm256_mul_ps(_mm256_mul_ps(one_minus_b2, grad), grad));
    _mm256_storeu_ps(m, mi);
    _mm256_storeu_ps(v, vi);
    const __m256 mhat = _mm256_div_ps(mi, bias1);
    const __m256 vhat = _mm256_div_ps(vi, bias2);
    const __m256 ratio = _mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), eps));
    return _mm256_fmadd_ps(neg_lr, _mm256_fmadd_ps(wd, param, ratio), param);
  }
};

TESSERA_TARGET_AVX2 void adamw_avx2(const AdamWStep<float>& s, float* p, const float* g, float* m,
                                    float* v, int64_t n) {
  const Avx2Step lanes(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(p + i, lanes.update(_mm256_loadu_ps(p + i), _mm256_loadu_ps(g + i), m + i,
                                         v + i));
  }
  for (; i < n; ++i) s.update(p[i], g[i], m[i], v[i]);
}

// adamw_bf16_avx512 on 8 lanes.
TESSERA_TARGET_AVX2 void adamw_bf16_avx2(const AdamWStep<float>& s, float* p, uint16_t* p16,
                                         const uint16_t* g16, float* m, float* v, int64_t n) {
  const Avx2Step lanes(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g16 + i)));
    const __m256 g = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));  // exact
    const __m256 updated = lanes.update(_mm256_loadu_ps(p + i), g, m + i, v + i);
    _mm256_storeu_ps(p + i, updated);
    const __m256i rounded = bf16_round_avx2(_mm256_castps_si256(updated));
    // The values are <= 0xffff, so the unsigned saturation never bites.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p16 + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(rounded),
                                      _mm256_extracti128_si256(rounded, 1)));
  }
  adamw_bf16_scalar(s, p + i, p16 + i, g16 + i, m + i, v + i, n - i);
}

// AdamWStep's constants in 16 lanes and its update of one vector, for both AVX-512 kernels.
struct Avx512Step {
  __m512 gs, l2, b1, one_minus_b1, b2, one_minus_b2, bias1, bias2, eps, wd, neg_lr;

  TESSERA_TARGET_AVX512 explicit Avx512Step(const AdamWStep<float>& s)
      : gs(_mm512_set1_ps(s.gs)),
        l2(_mm512_set1_ps(s.l2)),
        b1(_mm512_set1_ps(s.b1)),
        one_minus_b1(_mm512_set1_ps(1.0f - s.b1)),
        b2(_mm512_set1_ps(s.b2)),
        one_minus_b2(_mm512_set1_ps(1.0f - s.b2)),
        bias1(_mm512_set1_ps(s.bias1)),
        bias2(_mm512_set1_ps(s.bias2)),
        eps(_mm512_set1_ps(s.eps)),
        wd(_mm512_set1_ps(s.wd)),
        neg_lr(_mm512_set1_ps(-s.lr)) {}

  // Updates m[0, 16) and v[0, 16) and returns the new parameters.
  TESSERA_TARGET_AVX512 __m512 update(__m512 param, __m512 g, float* m, float* v) const {
    const __m512 grad = _mm512_fmadd_ps(g, gs, _mm512_mul_ps(l2, param));
    const __m512 mi = _mm512_fmadd_ps(b1, _mm512_loadu_ps(m), _mm512_mul_ps(one_minus_b1, grad));
    const __m512 vi = _mm512_fmadd_ps(b2, _mm512_loadu_ps(v),
                                      _mm512_mul_ps(_mm512_mul_ps(one_minus_b2, grad), grad));
    _mm512_storeu_ps(m, mi);
    _mm512_storeu_ps(v, vi);
    const __m512 mhat = _mm512_div_ps(mi, bias1);
    const __m512 vhat = _mm512_div_ps(vi, bias2);
    const __m512 ratio = _mm512_div_ps(mhat, _mm512_add_ps(_mm512_sqrt_ps(vhat), eps));
    return _mm512_fmadd_ps(neg_lr, _mm512_fmadd_ps(wd, param, ratio), param);
  }
};

TESSERA_TARGET_AVX512 void adamw_avx512(const AdamWStep<float>& s, float* p, const float* g,
                                        float* m, float* v, int64_t n) {
  const Avx512Step lanes(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(p + i, lanes.update(_mm512_loadu_ps(p + i), _mm512_loadu_ps(g + i), m + i,
                                         v + i));
  }
  for (; i < n; ++i) s.update(p[i], g[i], m[i], v[i]);
}

// bf16 in, bf16 out: the lanes of adamw_avx512 on the widened gradients, then the master
// rounded as f32_to_bf16 rounds it.
TESSERA_TARGET_AVX512 void adamw_bf16_avx512(const AdamWStep<float>& s, float* p, uint16_t* p16,
                                             const uint16_t* g16, float* m, float* v, int64_t n) {
  const Avx512Step lanes(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g16 + i)));
    const __m512 g = _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));  // exact
    const __m512 updated = lanes.update(_mm512_loadu_ps(p + i), g, m + i, v + i);
    _mm512_storeu_ps(p + i, updated);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p16 + i),
                        _mm512_cvtepi32_epi16(bf16_round_avx512(_mm512_castps_si512(updated))));
  }
  adamw_bf16_scalar(s, p + i, p16 + i, g16 + i, m + i, v + i, n - i);
}

#endif  // TESSERA_ADAM_X86

AdamPath detect_adam_path() {
#if TESSERA_ADAM_X86
  __builtin_cpu_init();
  // libgcc also checks XCR0, so these are false when the OS does not save the wider registers.
  if (__builtin_cpu_supports("avx512f")) return AdamPath::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AdamPath::Avx2;
#endif
  return AdamPath::Scalar;
}

Kernel kernel_for(AdamPath path) {
#if TESSERA_ADAM_X86
  if (path == AdamPath::Avx512) return adamw_avx512;
  if (path == AdamPath::Avx2) return adamw_avx2;
#endif
  return adamw_scalar;
}

}  // namespace

const char* adam_path_name(AdamPath path) {
  switch (path) {
    case AdamPath::Scalar:
      return "scalar";
    case AdamPath::Avx2:
      return "avx2";
    case AdamPath::Avx512:
      return "avx512";
  }
  return "unknown";
}

AdamPath best_adam_path() {
  static const AdamPath best = detect_adam_path();
  return best;
}

bool adam_path_supported(AdamPath path) {
  return static_cast<int>(path) <= static_cast<int>(best_adam_path());
}

void adamw_f32(float* params, const float* grads, float* m, float* v, int64_t n,
               const AdamWParams& p, AdamPath path) {
  TS_CHECK(n >= 0, "adamw_f32: negative length {}", n);
  TS_CHECK(adam_path_supported(path),
           "adamw_f32: this CPU cannot run the {} path (best here: {}); leave the path argument "
           "out",
           adam_path_name(path), adam_path_name(best_adam_path()));
  const AdamWStep<float> step(p);
  const Kernel kernel = kernel_for(path);
  if (n < kParallelMin || omp_in_parallel()) {
    kernel(step, params, grads, m, v, n);
    return;
  }
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock, len = std::min(kBlock, n - begin);
    kernel(step, params + begin, grads + begin, m + begin, v + begin, len);
  }
}

void adamw_bf16(float* master, uint16_t* params, const uint16_t* grads, float* m, float* v,
                int64_t n, const AdamWParams& p, AdamPath path) {
  TS_CHECK(n >= 0, "adamw_bf16: negative length {}", n);
  TS_CHECK(adam_path_supported(path),
           "adamw_bf16: this CPU cannot run the {} path (best here: {})",
           adam_path_name(path), adam_path_name(best_adam_path()));
  const AdamWStep<float> step(p);
  auto kernel = adamw_bf16_scalar;
#if TESSERA_ADAM_X86
  if (path == AdamPath::Avx512) kernel = adamw_bf16_avx512;
  if (path == AdamPath::Avx2) kernel = adamw_bf16_avx2;
#endif
  if (n < kParallelMin || omp_in_parallel()) {
    kernel(step, master, params, grads, m, v, n);
    return;
  }
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock, len = std::min(kBlock, n - begin);
    kernel(step, master + begin, params + begin, grads + begin, m + begin, v + begin, len);
  }
}

template <>
void adamw_update<float>(float* params, const float* grads, float* m, float* v, int64_t n,
                         const AdamWParams& p) {
  adamw_f32(params, grads, m, v, n, p);
}

// Double is the gradient checks' precision: the scalar rule, threaded.
template <>
void adamw_update<double>(double* params, const double* grads, double* m, double* v, int64_t n,
                          const AdamWParams& p) {
  const AdamWStep<double> step(p);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) step.update(params[i], grads[i], m[i], v[i]);
}

}  // namespace tessera::kernels::cpu
