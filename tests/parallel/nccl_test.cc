// The nccl backend on thread ranks (one GPU per rank, NCCL bootstrapped over the thread
// backend). Skips without a GPU; without CUDA compiled in, checks the NotCompiled path.
#include <gtest/gtest.h>

#include "parallel/comm/nccl_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tessera/config.h"

#if TESSERA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace tessera::parallel {
namespace {

TEST(Nccl, NotCompiledWithoutCuda) {
  if (nccl_compiled()) GTEST_SKIP() << "built with CUDA";
  spawn_ranks(1, [](ProcessGroup& pg) { EXPECT_THROW(make_nccl_group(pg), NotCompiled); });
}

#if TESSERA_WITH_CUDA
TEST(Nccl, AllReduceAndAllGatherOnDevices) {
  const int devices = cuda_device_count();
  if (devices == 0) GTEST_SKIP() << "no CUDA device";
  const int world = std::min(devices, 4);
  spawn_ranks(world, [&](ProcessGroup& bootstrap) {
    auto pg = make_nccl_group(bootstrap, bootstrap.rank());
    const size_t n = 1001;
    std::vector<float> host(n, static_cast<float>(pg->rank() + 1));
    float* dev = nullptr;
    ASSERT_EQ(cudaMalloc(&dev, n * world * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    pg->all_reduce(dev, n, DType::F32, {.op = ReduceOp::Sum})->wait();
    ASSERT_EQ(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(host[n - 1], static_cast<float>(world * (world + 1) / 2));
    pg->all_gather(dev + pg->rank() * n, dev, n, DType::F32)->wait();
    pg->barrier()->wait();
    cudaFree(dev);
  });
}
#endif

}  // namespace
}  // namespace tessera::parallel
