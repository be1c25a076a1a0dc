// The host tier over the CUDA copy engine (kernels::cuda::make_copy_engine): on a GPU the
// gradients reported as reduced and the rest reach the page-locked host copy, the write-back
// through the two staging buffers lands in device memory by flush(), and the engine's host
// bytes are the plan's. Skipped without a device (every machine this project has run on so
// far); built without CUDA, make_copy_engine throws NotCompiled.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "memory/offload/host_tier.h"
#include "runtime/core/copy_engine.h"
#include "runtime/core/error.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/cuda_kernels.h"
#include "tessera/config.h"

namespace tessera::memory {
namespace {

namespace cu = kernels::cuda;

TEST(HostTierCuda, GradientsComeDownAndParametersGoBackUp) {
  if (cu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cu::set_device(0);
  const cu::Stream producer = cu::create_stream();
  {
    const std::unique_ptr<CopyEngine> engine = cu::make_copy_engine(0, producer);
    EXPECT_EQ(engine->name(), "cuda");
    constexpr int64_t kNumel = (1 << 20) + 3;
    Storage grads(kNumel * sizeof(uint16_t), MemCategory::Grads, Device::cuda(0));
    Storage params(kNumel * sizeof(uint16_t), MemCategory::Params, Device::cuda(0));
    std::vector<uint16_t> host(kNumel);
    for (int64_t i = 0; i < kNumel; ++i) host[i] = static_cast<uint16_t>(i * 7);
    cu::copy_to_device(grads.data(), host.data(), host.size() * sizeof(uint16_t), producer);
    HostTier tier(*engine, kNumel, DType::BF16, 1 << 18, grads.data(), params.data());
    EXPECT_EQ(tier.pinned_bytes(), HostTier::plan_pinned_bytes(kNumel, DType::BF16, 1 << 18));
    EXPECT_EQ(engine->stats().host_bytes, tier.pinned_bytes());
    tier.start_pass();
    tier.grads_ready(kNumel / 2, kNumel);
    const auto* down = static_cast<const uint16_t*>(tier.host_grads());
    for (int64_t i = 0; i < kNumel; ++i) ASSERT_EQ(down[i], host[i]) << i;
    for (int64_t begin = 0; begin < kNumel; begin += 1 << 18) {
      const int64_t end = std::min<int64_t>(kNumel, begin + (1 << 18));
      auto* b = static_cast<uint16_t*>(tier.write_buffer(begin, end));
      for (int64_t i = begin; i < end; ++i) b[i - begin] = static_cast<uint16_t>(i * 3);
      tier.commit(begin, end);
    }
    tier.flush();
    std::vector<uint16_t> up(kNumel);
    cu::copy_to_host(up.data(), params.data(), up.size() * sizeof(uint16_t), producer);
    for (int64_t i = 0; i < kNumel; ++i) ASSERT_EQ(up[i], static_cast<uint16_t>(i * 3)) << i;
  }
  cu::destroy_stream(producer);
}

TEST(HostTierCuda, WithoutCudaTheEngineIsNotCompiled) {
  if (TESSERA_WITH_CUDA) GTEST_SKIP() << "built with CUDA";
  EXPECT_THROW(cu::make_copy_engine(0, nullptr), NotCompiled);
}

}  // namespace
}  // namespace tessera::memory
