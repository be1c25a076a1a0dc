// The tied output head fused with softmax cross-entropy, in chunks of kHeadChunkRows rows so
// the only vocabulary-sized buffer is one chunk of logits: GEMM into scratch, a softmax/loss
// kernel that turns the logits into dlogits in place, then the two backward GEMMs.
#include <algorithm>
#include <string>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr int kSoftmaxThreads = 512;

// ---- kernels --------------------------------------------------------------------------------

// One block per row. Every thread reads the target logit before the first block reduction,
// and the reductions' barriers order those reads before any in-place write. A thread touches
// the same columns in every pass, so the passes need no barrier between them otherwise.
template <typename T>
__global__ void softmax_cross_entropy_kernel(T* logits, float* losses, const int32_t* targets,
                                             int64_t V, float grad_scale, bool write_grad) {
  __shared__ float shared[kWarpSize];
  T* row = logits + blockIdx.x * V;
  const int32_t target = targets[blockIdx.x];
  const bool target_valid = target >= 0 && target < V;
  const float target_logit = target_valid ? load_f(row + target) : __int_as_float(0x7fc00000);

  float local_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
    local_max = fmaxf(local_max, load_f(row + j));
  const float row_max = block_reduce(local_max, shared, -INFINITY, MaxOp{});

  float local_sum = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float e = expf(load_f(row + j) - row_max);
    if (write_grad) store_f(row + j, e);  // kept: it becomes the gradient below
    local_sum += e;
  }
  const float sum = block_reduce(local_sum, shared, 0.0f, SumOp{});

  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + row_max - target_logit;
  if (write_grad) {
    const float factor = grad_scale / sum;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      float g = load_f(row + j) * factor;
      if (j == target) g -= grad_scale;
      store_f(row + j, g);
    }
  }
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

double lm_head_cross_entropy(float* dx, float* dwte, float* losses, const float* x,
                             const float* wte, const int32_t* targets, int64_t N, int64_t C,
                             int64_t V, float grad_scale, float* scratch, Stream stream) {
  TS_CUDA_ARG_CHECK(losses != nullptr && scratch != nullptr,
                    "cuda::lm_head_cross_entropy: losses [N] and scratch [kHeadChunkRows * V] "
                    "are required device buffers");
  TS_CUDA_ARG_CHECK(N >= 0 && C > 0 && V > 0,
                    "cuda::lm_head_cross_entropy: bad shape N=" + std::to_string(N) +
                        " C=" + std::to_string(C) + " V=" + std::to_string(V));
  if (N == 0) return 0.0;
  const cudaStream_t s = detail::to_cuda(stream);
  const bool backward = dx != nullptr || dwte != nullptr;
  for (int64_t r0 = 0; r0 < N; r0 += kHeadChunkRows) {
    const int64_t rows = std::min(kHeadChunkRows, N - r0);
    const float* x_chunk = x + r0 * C;
    gemm(false, true, rows, V, C, 1.0f, x_chunk, C, wte, C, 0.0f, scratch, V, stream);
    detail::softmax_cross_entropy_kernel<<<static_cast<unsigned>(rows), detail::kSoftmaxThreads, 0,
                                           s>>>(scratch, losses + r0, targets + r0, V, grad_scale,
                                                backward);
    TS_CUDA_CHECK_LAUNCH("softmax_cross_entropy_kernel");
    if (dx != nullptr) {
      gemm(false, false, rows, C, V, 1.0f, scratch, V, wte, C, 1.0f, dx + r0 * C, C, stream);
    }
    if (dwte != nullptr) {
      gemm(true, false, V, C, rows, 1.0f, scratch, V, x_chunk, C, 1.0f, dwte, C, stream);
    }
    // The next chunk's GEMM overwrites scratch; stream order keeps it behind these reads.
  }
  return detail::reduce_to_host<float, false>(losses, N, s);
}

}  // namespace tessera::kernels::cuda
