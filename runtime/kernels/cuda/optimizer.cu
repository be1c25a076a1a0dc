// The optimizer's pieces: AdamW, in-place scaling, and sum of squares (for the global
// gradient norm). Also the deterministic reduce-to-host that sum_squares and the fused head's
// loss sum share.
#include <cmath>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr int kReduceThreads = 512;

// ---- kernels --------------------------------------------------------------------------------

template <typename T>
__global__ void scale_kernel(T* x, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    store_f(x + i, load_f(x + i) * s);
  }
}

// Bias corrections come in precomputed (host, double) so every thread does the same work.
template <typename T>
__global__ void adamw_kernel(T* params, const T* grads, float* m, float* v, int64_t n, float lr,
                             float beta1, float beta2, float eps, float weight_decay,
                             float grad_scale, float bias_correction1, float bias_correction2) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = load_f(grads + i) * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bias_correction1;
    const float v_hat = vi / bias_correction2;
    const float p = load_f(params + i);
    store_f(params + i, p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p));
  }
}

// Pass 1: each block sums a grid-stride share into partials[blockIdx.x], in double.
template <typename T, bool kSquare>
__global__ void reduce_partials_kernel(double* partials, const T* x, int64_t n) {
  __shared__ double shared[kWarpSize];
  double sum = 0.0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double value = load_f(x + i);
    sum += kSquare ? value * value : value;
  }
  sum = block_reduce(sum, shared, 0.0, SumOp{});
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// Pass 2: one block adds the partials into partials[kMaxReductionBlocks].
__global__ void reduce_final_kernel(double* partials, int num_partials) {
  __shared__ double shared[kWarpSize];
  double sum = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) sum += partials[i];
  sum = block_reduce(sum, shared, 0.0, SumOp{});
  if (threadIdx.x == 0) partials[kMaxReductionBlocks] = sum;
}

}  // namespace

template <typename T, bool kSquare>
double reduce_to_host(const T* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return 0.0;
  double* partials = reduction_scratch();
  // The block count depends on n alone, so the summation order (and the result) does too.
  const int blocks = static_cast<int>(
      std::min<int64_t>((n + kReduceThreads - 1) / kReduceThreads, kMaxReductionBlocks));
  reduce_partials_kernel<T, kSquare><<<blocks, kReduceThreads, 0, stream>>>(partials, x, n);
  TS_CUDA_CHECK_LAUNCH("reduce_partials_kernel");
  reduce_final_kernel<<<1, kReduceThreads, 0, stream>>>(partials, blocks);
  TS_CUDA_CHECK_LAUNCH("reduce_final_kernel");
  double result = 0.0;
  TS_CUDA_CHECK(cudaMemcpyAsync(&result, partials + kMaxReductionBlocks, sizeof(double),
                                cudaMemcpyDeviceToHost, stream));
  TS_CUDA_CHECK(cudaStreamSynchronize(stream));
  return result;
}

template double reduce_to_host<float, true>(const float*, int64_t, cudaStream_t);
template double reduce_to_host<float, false>(const float*, int64_t, cudaStream_t);

}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

double sum_squares(const float* x, int64_t n, Stream stream) {
  return detail::reduce_to_host<float, true>(x, n, detail::to_cuda(stream));
}

void scale(float* x, float s, int64_t n, Stream stream) {
  if (n <= 0) return;
  detail::scale_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                         detail::to_cuda(stream)>>>(x, s, n);
  TS_CUDA_CHECK_LAUNCH("scale_kernel");
}

void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                  const AdamWParams& p, Stream stream) {
  if (n <= 0) return;
  TS_CUDA_ARG_CHECK(p.step >= 1,
                    "cuda::adamw_update: step is 1-based, got " + std::to_string(p.step));
  const auto bias_correction1 =
      static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step)));
  const auto bias_correction2 =
      static_cast<float>(1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step)));
  detail::adamw_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                         detail::to_cuda(stream)>>>(params, grads, m, v, n, p.lr, p.beta1, p.beta2,
                                                    p.eps, p.weight_decay, p.grad_scale,
                                                    bias_correction1, bias_correction2);
  TS_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace tessera::kernels::cuda
