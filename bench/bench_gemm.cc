// Benchmark (not a test): sgemm GFLOP/s of the GEMM candidates on GPT-2 124M's training
// shapes (B*T = 1024 rows): oneDNN's dnnl_sgemm (what tessera uses) beside a CBLAS library
// (OpenBLAS or BLIS, whichever this binary was linked with), as the environment sets them.
//   build/bench/bench_gemm_openblas [threads]
#include <cblas.h>
#include <dnnl.h>
#if TESSERA_CBLAS_BLIS
#include <blis.h>
#endif
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/bench_timing.h"

namespace {

using tessera::bench::best_seconds;

using Case = tessera::bench::GemmCase;

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : omp_get_max_threads();
  omp_set_num_threads(threads);
  // Each library has its own thread control: OpenBLAS's pthreads build and BLIS ignore
  // OpenMP's setting.
#if TESSERA_CBLAS_OPENBLAS
  openblas_set_num_threads(threads);
#elif TESSERA_CBLAS_BLIS
  bli_thread_set_num_threads(threads);
#endif
  const Case cases[] = {
      {"qkv fwd", false, true, 1024, 2304, 768},  {"fc fwd", false, true, 1024, 3072, 768},
      {"fc dinp", false, false, 1024, 768, 3072}, {"fc dweight", true, false, 3072, 768, 1024},
      {"head fwd", false, true, 256, 50304, 768}, {"head dwte", true, false, 50304, 768, 256},
      {"square", false, false, 2048, 2048, 2048},
  };
  std::printf("%d threads (%s)\n| shape | M x N x K | oneDNN sgemm | CBLAS |\n|---|---|---|---|\n",
              threads, TESSERA_CBLAS_NAME);
  for (const Case& c : cases) {
    std::vector<float> A(size_t(c.M) * c.K, 0.5f), B(size_t(c.K) * c.N, 0.25f),
        C(size_t(c.M) * c.N, 0.0f);
    const int lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    const double flops = 2.0 * c.M * c.N * c.K;
    const double dnnl = best_seconds([&] {
      dnnl_sgemm(c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(),
                 ldb, 0.0f, C.data(), c.N);
    }, 5);
    const double blas = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans,
                  c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), c.N);
    }, 5);
    std::printf("| %s | %d x %d x %d | %.1f | %.1f |\n", c.what, c.M, c.N, c.K, flops / dnnl / 1e9,
                flops / blas / 1e9);
  }
  return 0;
}
