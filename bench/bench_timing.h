// Timing for the GEMM benchmarks: the best of a few runs after one warm-up, which on a shared
// machine is the run least disturbed by other work, and the GEMM shape they time.
#pragma once

#include <algorithm>
#include <chrono>

namespace tessera::bench {

// Seconds of the fastest of `repeats` calls of f, after one untimed call (first-touch page
// faults, JIT code generation, scratch buffers growing).
template <typename F>
double best_seconds(F&& f, int repeats) {
  f();
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t = std::chrono::steady_clock::now();
    f();
    best =
        std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  return best;
}

// One GEMM of a table row: C[M,N] = op(A) @ op(B), op = transpose where ta / tb.
struct GemmCase {
  const char* what;
  bool ta, tb;
  int M, N, K;
};

}  // namespace tessera::bench
