// The tied output head fused with softmax cross-entropy, in chunks of kHeadChunkRows rows so
// the only vocabulary-sized buffer is one chunk of logits: GEMM into scratch, a softmax/loss
// kernel that turns the logits into dlogits (in place, or rounded into a 16-bit scratch for
// the mixed-precision head), then the two backward GEMMs.
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
// the same columns in every pass, so the passes need no barrier between them otherwise. The
// exponentials are kept in the f32 logits and dlogits go to grad, which is the logits
// themselves (f32 head) or a 16-bit buffer (mixed head: each value rounded once, from f32).
template <typename G>
__global__ void softmax_cross_entropy_kernel(float* logits, G* grad, float* losses,
                                             const int32_t* targets, int64_t V, float grad_scale,
                                             bool write_grad) {
  __shared__ float shared[kWarpSize];
  float* row = logits + blockIdx.x * V;
  const int32_t target = targets[blockIdx.x];
  const bool target_valid = target >= 0 && target < V;
  const float target_logit = target_valid ? row[target] : __int_as_float(0x7fc00000);

  float local_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) local_max = fmaxf(local_max, row[j]);
  const float row_max = block_reduce(local_max, shared, -INFINITY, MaxOp{});

  float local_sum = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float e = expf(row[j] - row_max);
    if (write_grad) row[j] = e;  // kept: it becomes the gradient below
    local_sum += e;
  }
  const float sum = block_reduce(local_sum, shared, 0.0f, SumOp{});

  if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + row_max - target_logit;
  if (write_grad) {
    const float factor = grad_scale / sum;
    G* grad_row = grad + blockIdx.x * V;  // grad may be null when !write_grad
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      float g = row[j] * factor;
      if (j == target) g -= grad_scale;
      store_f(grad_row + j, g);
    }
  }
}

// ---- launch helpers -----------------------------------------------------------------------------

// The chunk loop for GEMM operands of type T: dlogits go to grad_scratch (T), which for
// T = float is scratch itself.
template <typename T>
double lm_head_t(float* dx, float* dwte, float* losses, const T* x, const T* wte,
                 const int32_t* targets, int64_t N, int64_t C, int64_t V, float grad_scale,
                 float* scratch, T* grad_scratch, cudaStream_t stream) {
  const bool backward = dx != nullptr || dwte != nullptr;
  for (int64_t r0 = 0; r0 < N; r0 += kHeadChunkRows) {
    const int64_t rows = std::min(kHeadChunkRows, N - r0);
    const T* x_chunk = x + r0 * C;
    gemm_t(false, true, rows, V, C, 1.0f, x_chunk, C, wte, C, 0.0f, scratch, V, stream);
    softmax_cross_entropy_kernel<<<static_cast<unsigned>(rows), kSoftmaxThreads, 0, stream>>>(
        scratch, grad_scratch, losses + r0, targets + r0, V, grad_scale, backward);
    TS_CUDA_CHECK_LAUNCH("softmax_cross_entropy_kernel");
    if (dx != nullptr) {
      gemm_t(false, false, rows, C, V, 1.0f, grad_scratch, V, wte, C, 1.0f, dx + r0 * C, C, stream);
    }
    if (dwte != nullptr) {
      gemm_t(true, false, V, C, rows, 1.0f, grad_scratch, V, x_chunk, C, 1.0f, dwte, C, stream);
    }
    // The next chunk's GEMM overwrites scratch; stream order keeps it behind these reads.
  }
  return reduce_to_host<float, false>(losses, N, stream);
}

void check_head_args(const char* op, const float* losses, const float* scratch, int64_t N,
                     int64_t C, int64_t V) {
  TS_CUDA_ARG_CHECK(losses != nullptr && scratch != nullptr,
                    std::string(op) +
                        ": losses [N] and scratch [kHeadChunkRows * V] are required "
                        "device buffers");
  TS_CUDA_ARG_CHECK(N >= 0 && C > 0 && V > 0,
                    std::string(op) + ": bad shape N=" + std::to_string(N) +
                        " C=" + std::to_string(C) + " V=" + std::to_string(V));
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

double lm_head_cross_entropy(float* dx, float* dwte, float* losses, const float* x,
                             const float* wte, const int32_t* targets, int64_t N, int64_t C,
                             int64_t V, float grad_scale, float* scratch, Stream stream) {
  detail::check_head_args("cuda::lm_head_cross_entropy", losses, scratch, N, C, V);
  if (N == 0) return 0.0;
  return detail::lm_head_t(dx, dwte, losses, x, wte, targets, N, C, V, grad_scale, scratch, scratch,
                           detail::to_cuda(stream));
}

double lm_head_cross_entropy16(DType dtype, float* dx, float* dwte, float* losses,
                               const uint16_t* x, const uint16_t* wte, const int32_t* targets,
                               int64_t N, int64_t C, int64_t V, float grad_scale, float* scratch,
                               uint16_t* scratch16, Stream stream) {
  constexpr const char* kOp = "cuda::lm_head_cross_entropy16";
  detail::check_head_args(kOp, losses, scratch, N, C, V);
  TS_CUDA_ARG_CHECK((dx == nullptr && dwte == nullptr) || scratch16 != nullptr,
                    std::string(kOp) + ": backward needs scratch16 [kHeadChunkRows * V]");
  return detail::dispatch16(dtype, kOp, [&](auto tag) {
    using T = decltype(tag);
    if (N == 0) return 0.0;
    return detail::lm_head_t(dx, dwte, losses, detail::as_device16<T>(x),
                             detail::as_device16<T>(wte), targets, N, C, V, grad_scale, scratch,
                             detail::as_device16<T>(scratch16), detail::to_cuda(stream));
  });
}

}  // namespace tessera::kernels::cuda
