// gemm: float through oneDNN's sgemm (AVX-512 kernels chosen at run time, OpenMP threads
// shared with our own kernels; measured against OpenBLAS and BLIS in docs/PERFORMANCE.md),
// double through a plain blocked loop that only gradient checks use.
#include <dnnl.h>

#include "runtime/core/error.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    }
    return;
  }
  const dnnl_status_t status =
      dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C,
                 ldc);
  if (status != dnnl_success) {
    TS_THROW(Error, "oneDNN sgemm failed (status {}) for M={} N={} K={} lda={} ldb={} ldc={}",
             static_cast<int>(status), M, N, K, lda, ldb, ldc);
  }
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
#pragma omp parallel for schedule(static) if (M * N * K > 32768)
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const double b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = alpha * acc + (beta == 0.0 ? 0.0 : beta * C[i * ldc + j]);
    }
  }
}

}  // namespace tessera::kernels::cpu
