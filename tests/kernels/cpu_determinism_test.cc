// Kernels that reduce across OpenMP threads give the same bits on every run at a given thread
// count (activation checkpointing and the golden losses rely on it): a parameter gradient is
// never summed in thread arrival order.
#include <gtest/gtest.h>
#include <omp.h>

#include <vector>

#include "runtime/core/rng.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {
namespace {

std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.uniform() * 2.0 - 1.0);
  return v;
}

TEST(CpuDeterminism, LayerNormBackwardSumsThreadPartialsInOrder) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(4);  // more threads than cores: arrival order varies from run to run
  const int64_t N = 4096, C = 64;
  const auto x = random_vector(N * C, 1), dy = random_vector(N * C, 2), w = random_vector(C, 3);
  const auto b = random_vector(C, 4);
  std::vector<float> y(N * C), mean(N), rstd(N);
  layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<float> first_dw;
  for (int run = 0; run < 20; ++run) {
    std::vector<float> dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
    layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                       rstd.data(), N, C);
    if (run == 0) first_dw = dw;
    ASSERT_EQ(dw, first_dw) << "run " << run;
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace tessera::kernels::cpu
