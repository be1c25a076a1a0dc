// The same graph on the CUDA ops table: one forward-backward of a small GPT on the device
// gives the CPU's loss and gradients within float tolerance, in fp32 and bf16 (skipped without
// a device); a build without CUDA refuses the CUDA table with NotCompiled.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/core/rng.h"
#include "runtime/kernels/cuda_kernels.h"
#include "tessera/config.h"

namespace tessera::models {
namespace {

namespace cu = tessera::kernels::cuda;

GPTConfig small() { return {2, 4, 64, 96, 32}; }

std::vector<char> working_copy(DType dtype, const std::vector<float>& w) {
  std::vector<char> out(w.size() * dtype_size(dtype));
  if (dtype == DType::F32) {
    std::memcpy(out.data(), w.data(), out.size());
  } else {
    auto* o = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < w.size(); ++i) o[i] = f32_to_bf16(w[i]);
  }
  return out;
}

std::vector<float> widen(DType dtype, const std::vector<char>& g) {
  const size_t n = g.size() / dtype_size(dtype);
  std::vector<float> out(n);
  if (dtype == DType::F32) {
    std::memcpy(out.data(), g.data(), g.size());
  } else {
    const auto* h = reinterpret_cast<const uint16_t*>(g.data());
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h[i]);
  }
  return out;
}

TEST(GptCuda, MatchesTheCpuGraph) {
  if (cu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const GPTConfig cfg = small();
  const int B = 2, S = 16;
  Rng rng(5);
  std::vector<int32_t> in(B * S), tg(B * S);
  for (auto& t : in) t = static_cast<int32_t>(rng.below(cfg.vocab_size));
  for (auto& t : tg) t = static_cast<int32_t>(rng.below(cfg.vocab_size));
  for (DType dtype : {DType::F32, DType::BF16}) {
    GPT<float> cpu(cfg, dtype);
    GPT<float> gpu(cfg, dtype, Device::cuda(0));
    const int64_t n = cpu.registry().numel();
    std::vector<float> init(n);
    init_params(cpu.registry(), init.data(), 3);
    std::vector<char> params = working_copy(dtype, init), grads(params.size(), 0);
    LocalParamAccess cpu_access(cpu.registry(), params.data(), grads.data(), dtype_size(dtype));
    Storage dparams(params.size(), MemCategory::Params, Device::cuda(0));
    Storage dgrads(params.size(), MemCategory::Grads, Device::cuda(0));
    cu::copy_to_device(dparams.data(), params.data(), params.size());
    LocalParamAccess gpu_access(gpu.registry(), dparams.data(), dgrads.data(), dtype_size(dtype));
    cpu.allocate_activations(B, S);
    gpu.allocate_activations(B, S);
    const double want = cpu.forward_backward(cpu_access, in.data(), tg.data(), B, S, 1.0);
    const double got = gpu.forward_backward(gpu_access, in.data(), tg.data(), B, S, 1.0);
    const double tol = dtype == DType::F32 ? 1e-4 : 2e-2;
    EXPECT_NEAR(got, want, tol * want) << dtype_name(dtype);
    std::vector<char> gpu_grads(params.size());
    cu::copy_to_host(gpu_grads.data(), dgrads.data(), gpu_grads.size());
    const std::vector<float> a = widen(dtype, grads), b = widen(dtype, gpu_grads);
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
      scale = std::max(scale, static_cast<double>(std::abs(a[i])));
    }
    EXPECT_LE(diff, (dtype == DType::F32 ? 1e-3 : 5e-2) * scale) << dtype_name(dtype);
  }
}

TEST(GptCuda, BuildWithoutCudaRefusesTheTable) {
  if (TESSERA_WITH_CUDA) GTEST_SKIP() << "built with CUDA";
  EXPECT_THROW(GPT<float>(small(), DType::F32, Device::cuda(0)), NotCompiled);
  EXPECT_THROW(GPT<double>(small(), DType::F64, Device::cuda(0)), InvalidArgument);
}

}  // namespace
}  // namespace tessera::models
