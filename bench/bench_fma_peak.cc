// Benchmark (not a test): the fp32 FMA peak of one core, the hardware ceiling that sgemm
// approaches. 12 independent AVX-512 FMA chains hide the FMA latency.
//   build/bench/bench_fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>

__attribute__((target("avx512f"))) int main() {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(i * 1e-3f);
  const __m512 mul = _mm512_set1_ps(0.999f), add = _mm512_set1_ps(1e-4f);
  const long iters = 200'000'000;
  const auto t = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], mul, add);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  float sink = 0, lanes[16];
  for (int i = 0; i < 12; ++i) {
    _mm512_storeu_ps(lanes, acc[i]);
    for (float x : lanes) sink += x;  // keeps the chains alive
  }
  std::printf("AVX-512 FMA, one core: %.1f GFLOP/s (checksum %g)\n", iters * 12 * 32.0 / s / 1e9, sink);
  return 0;
}
