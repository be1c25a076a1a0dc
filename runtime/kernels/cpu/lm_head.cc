// The tied output head fused with softmax cross-entropy (forward and backward in one pass
// over chunks of rows). The row pass lives in shared_steps.h's declarations so the 16-bit twin
// in mixed.cc runs the same code; AdamW is in adam.cc.
#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/kernels/cpu/shared_steps.h"
#include "runtime/kernels/cpu/vec_math.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

template <typename T>
double cross_entropy_rows(T* logits, T* losses, const int32_t* targets, int64_t rows, int64_t V,
                          bool backward, T grad_scale) {
  double loss_sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss_sum)
  for (int64_t r = 0; r < rows; ++r) {
    T* l = logits + r * V;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, l[j]);
    const int32_t target = targets[r];
    const T target_logit = l[target];
    T sum = 0;
    if (backward) {
      // Keep the exponentials: they become the gradient below.
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < V; ++j) {
        l[j] = k_exp(l[j] - mx);
        sum += l[j];
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < V; ++j) sum += k_exp(l[j] - mx);
    }
    const T loss = std::log(sum) + mx - target_logit;
    if (losses != nullptr) losses[r] = loss;
    loss_sum += static_cast<double>(loss);
    if (backward) {
      const T factor = grad_scale / sum;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) l[j] *= factor;
      l[target] -= grad_scale;
    }
  }
  return loss_sum;
}

template <typename T>
double lm_head_cross_entropy(T* dx, T* dwte, T* losses, const T* x, const T* wte,
                             const int32_t* targets, int64_t N, int64_t C, int64_t V,
                             T grad_scale, T* scratch) {
  double loss_sum = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += kHeadChunkRows) {
    const int64_t rows = std::min(kHeadChunkRows, N - r0);
    T* logits = scratch;
    gemm<T>(false, true, rows, V, C, T(1), x + r0 * C, C, wte, C, T(0), logits, V);
    loss_sum += cross_entropy_rows<T>(logits, losses != nullptr ? losses + r0 : nullptr,
                                      targets + r0, rows, V, dx != nullptr, grad_scale);
    if (dx != nullptr) {
      gemm<T>(false, false, rows, C, V, T(1), logits, V, wte, C, T(1), dx + r0 * C, C);
      gemm<T>(true, false, V, C, rows, T(1), logits, V, x + r0 * C, C, T(1), dwte, C);
    }
  }
  return loss_sum;
}

template double cross_entropy_rows<float>(float*, float*, const int32_t*, int64_t, int64_t, bool,
                                          float);
template double cross_entropy_rows<double>(double*, double*, const int32_t*, int64_t, int64_t,
                                           bool, double);
template double lm_head_cross_entropy<float>(float*, float*, float*, const float*, const float*,
                                             const int32_t*, int64_t, int64_t, int64_t, float,
                                             float*);
template double lm_head_cross_entropy<double>(double*, double*, double*, const double*,
                                              const double*, const int32_t*, int64_t, int64_t,
                                              int64_t, double, double*);

}  // namespace tessera::kernels::cpu
