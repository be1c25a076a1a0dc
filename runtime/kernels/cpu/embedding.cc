// Token + position embedding.
#include <algorithm>

#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                       int C) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < int64_t{B} * T_; ++bt) {
    const T* tok = wte + int64_t{tokens[bt]} * C;
    const T* pos = wpe + (bt % T_) * C;
    T* o = out + bt * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = tok[c] + pos[c];
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                        int C) {
  // Several positions may hold the same token, so threads split the channels, not the
  // positions: each thread owns a column block of dwte and dwpe and no writes collide.
  constexpr int kBlock = 64;
  const int blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kBlock;
    const int c1 = std::min(C, c0 + kBlock);
    for (int64_t bt = 0; bt < int64_t{B} * T_; ++bt) {
      const T* d = dout + bt * C;
      T* tok = dwte + int64_t{tokens[bt]} * C;
      T* pos = dwpe + (bt % T_) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) {
        tok[c] += d[c];
        pos[c] += d[c];
      }
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, const float*, int,
                                       int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, const double*,
                                        int, int, int);
template void embedding_backward<float>(float*, float*, const float*, const int32_t*, int, int,
                                        int);
template void embedding_backward<double>(double*, double*, const double*, const int32_t*, int,
                                         int, int);

}  // namespace tessera::kernels::cpu
