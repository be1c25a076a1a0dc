// Layer normalisation over the last dimension, GPT-2's eps = 1e-5.
#include <omp.h>

#include <cmath>
#include <vector>

#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {
namespace {
constexpr double kEps = 1e-5;
}

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += x[c];
    const T m = sum / C;
    T var = 0;  // two-pass variance: no cancellation for inputs with a large mean
#pragma omp simd reduction(+ : var)
    for (int64_t c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const T s = T(1) / std::sqrt(var / C + T(kEps));
    T* y = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int64_t N, int64_t C) {
  // Rows are split across threads; each sums its rows' dweight/dbias privately, and the
  // partial sums are added in thread order, so no two threads race on a parameter gradient
  // and the result is the same on every run.
  const int max_threads = omp_get_max_threads();
  std::vector<T> partial(static_cast<size_t>(2 * C) * max_threads, T(0));
  int used_threads = 1;
#pragma omp parallel
  {
    T* dw = partial.data() + static_cast<size_t>(2 * C) * omp_get_thread_num();
    T* db = dw + C;
#pragma omp single
    used_threads = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* x = inp + n * C;
      const T* dy = dout + n * C;
      const T m = mean[n];
      const T s = rstd[n];
      T dnorm_mean = 0, dnorm_norm_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
      for (int64_t c = 0; c < C; ++c) {
        const T norm = (x[c] - m) * s;
        const T dnorm = dy[c] * weight[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
      }
      dnorm_mean /= C;
      dnorm_norm_mean /= C;
      T* dx = dinp + n * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T norm = (x[c] - m) * s;
        const T dnorm = dy[c] * weight[c];
        dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        dw[c] += dy[c] * norm;
        db[c] += dy[c];
      }
    }
  }
  for (int t = 0; t < used_threads; ++t) {
    const T* dw = partial.data() + static_cast<size_t>(2 * C) * t;
    const T* db = dw + C;
    for (int64_t c = 0; c < C; ++c) {
      dweight[c] += dw[c];
      dbias[c] += db[c];
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t);

}  // namespace tessera::kernels::cpu
