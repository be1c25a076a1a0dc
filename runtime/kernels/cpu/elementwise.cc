// Element-wise kernels: GELU (tanh form), residual add, scale, sum of squares.
#include <cmath>

#include "runtime/kernels/cpu/vec_math.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {
namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T u = T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x);
    out[i] = T(0.5) * x * (T(1) + k_tanh(u));
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T u = T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x);
    const T th = k_tanh(u);
    const T sech2 = T(1) - th * th;
    const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
    dinp[i] += dout[i] * (T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * du);
  }
}

template <typename T>
void bias_add(T* out, const T* bias, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* row = out + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] += bias[c];
  }
}

template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void residual_backward(T* da, T* db, const T* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  double total = 0.0;
#pragma omp parallel for simd reduction(+ : total) schedule(static)
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  return total;
}

template <typename T>
void scale(T* x, T s, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

#define TS_INSTANTIATE(T)                                         \
  template void gelu_forward<T>(T*, const T*, int64_t);           \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t); \
  template void residual_forward<T>(T*, const T*, const T*, int64_t); \
  template void bias_add<T>(T*, const T*, int64_t, int64_t);          \
  template void residual_backward<T>(T*, T*, const T*, int64_t);  \
  template double sum_squares<T>(const T*, int64_t);              \
  template void scale<T>(T*, T, int64_t);
TS_INSTANTIATE(float)
TS_INSTANTIATE(double)
#undef TS_INSTANTIATE

}  // namespace tessera::kernels::cpu
