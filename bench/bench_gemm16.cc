// Benchmark (not a test): GFLOP/s of tessera's three GEMMs on every GEMM shape of one GPT-2
// 124M training step (B=4, T=256: 1024 rows, C=768): fp32 sgemm (gemm<float>), gemm16 on bf16
// (oneDNN's AVX512_BF16 matmul where the CPU has it) and gemm16 on f16 (widened to f32, then
// sgemm), side by side in one process, and the mean speed ratio of each 16-bit GEMM to sgemm.
//   build/bench/bench_gemm16 [threads]
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/bench_timing.h"
#include "runtime/core/half.h"
#include "runtime/kernels/cpu_mixed.h"

namespace {

using tessera::DType;
using tessera::bench::best_seconds;
namespace cpu = tessera::kernels::cpu;

using Case = tessera::bench::GemmCase;

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : omp_get_max_threads();
  omp_set_num_threads(threads);
  constexpr int kRows = 1024, kC = 768, kV = 50304, kChunk = static_cast<int>(cpu::kHeadChunkRows);
  // A linear layer inp[N,C] -> out[N,OC]: forward (N,T), dinp (N,N), dweight (T,N), as
  // matmul_forward16 / matmul_backward16 call them.
  const Case cases[] = {
      {"qkv fwd", false, true, kRows, 3 * kC, kC},
      {"qkv dinp", false, false, kRows, kC, 3 * kC},
      {"qkv dweight", true, false, 3 * kC, kC, kRows},
      {"attproj fwd", false, true, kRows, kC, kC},
      {"attproj dinp", false, false, kRows, kC, kC},
      {"attproj dweight", true, false, kC, kC, kRows},
      {"fc fwd", false, true, kRows, 4 * kC, kC},
      {"fc dinp", false, false, kRows, kC, 4 * kC},
      {"fc dweight", true, false, 4 * kC, kC, kRows},
      {"fcproj fwd", false, true, kRows, kC, 4 * kC},
      {"fcproj dinp", false, false, kRows, 4 * kC, kC},
      {"fcproj dweight", true, false, kC, 4 * kC, kRows},
      {"head fwd", false, true, kChunk, kV, kC},
      {"head dx", false, false, kChunk, kC, kV},
      {"head dwte", true, false, kV, kC, kChunk},
  };
  std::printf("%d threads; GFLOP/s, best of 3\n", threads);
  std::printf(
      "| shape | M x N x K | sgemm f32 | gemm16 bf16 | gemm16 f16 | bf16 / f32 | f16 / f32 |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  double bf16_ratio_sum = 0.0, f16_ratio_sum = 0.0;
  for (const Case& c : cases) {
    const size_t a_size = size_t(c.M) * c.K, b_size = size_t(c.K) * c.N;
    const std::vector<float> A(a_size, 0.5f), B(b_size, 0.25f);
    const std::vector<uint16_t> A_bf16(a_size, tessera::f32_to_bf16(0.5f)),
        B_bf16(b_size, tessera::f32_to_bf16(0.25f)), A_f16(a_size, tessera::f32_to_f16(0.5f)),
        B_f16(b_size, tessera::f32_to_f16(0.25f));
    std::vector<float> C(size_t(c.M) * c.N, 0.0f);
    const int lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    const double gflop = 2.0 * c.M * c.N * c.K / 1e9;
    const auto sgemm = [&] {
      cpu::gemm<float>(c.ta, c.tb, c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                       C.data(), c.N);
    };
    const double f32 = gflop / best_seconds(sgemm, 3);
    auto rate16 = [&](DType dtype, const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
      const auto gemm16 = [&] {
        cpu::gemm16(dtype, c.ta, c.tb, c.M, c.N, c.K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f,
                    C.data(), c.N);
      };
      return gflop / best_seconds(gemm16, 3);
    };
    const double bf16 = rate16(DType::BF16, A_bf16, B_bf16);
    const double f16 = rate16(DType::F16, A_f16, B_f16);
    bf16_ratio_sum += bf16 / f32;
    f16_ratio_sum += f16 / f32;
    std::printf("| %s | %d x %d x %d | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", c.what, c.M, c.N,
                c.K, f32, bf16, f16, bf16 / f32, f16 / f32);
  }
  const double n = static_cast<double>(std::size(cases));
  std::printf("| mean ratio | | | | | %.2fx | %.2fx |\n", bf16_ratio_sum / n, f16_ratio_sum / n);
  return 0;
}
