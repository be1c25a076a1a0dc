// The optimizer's pieces: AdamW (f32 weights, or f32 master weights of 16-bit ones), in-place
// scaling, and sum of squares (for the global gradient norm, of f32 or 16-bit gradients). Also the
// deterministic reduce-to-host that sum_squares and the fused head's loss sum share.
#include <cmath>
#include <string>

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

// The step's scalars. Bias corrections are computed once on the host (in double), so every
// thread does the same work.
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay, grad_scale, l2;
  float bias_correction1, bias_correction2;
};

// params are f32: the weights themselves, or the master copy of 16-bit ones, in which case
// params16 (non-null) receives the updated weights rounded. Gradients are f32 or 16-bit.
template <typename G, typename P16>
__global__ void adamw_kernel(float* params, P16* params16, const G* grads, float* m, float* v,
                             int64_t n, AdamWStep s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float p = params[i];
    const float g = load_f(grads + i) * s.grad_scale + s.l2 * p;
    const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / s.bias_correction1;
    const float v_hat = vi / s.bias_correction2;
    const float updated = p - s.lr * (m_hat / (sqrtf(v_hat) + s.eps) + s.weight_decay * p);
    params[i] = updated;
    if (params16 != nullptr) store_f(params16 + i, updated);
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
template double reduce_to_host<__half, true>(const __half*, int64_t, cudaStream_t);
template double reduce_to_host<__nv_bfloat16, true>(const __nv_bfloat16*, int64_t, cudaStream_t);

namespace {

template <typename G, typename P16>
void adamw_t(float* params, P16* params16, const G* grads, float* m, float* v, int64_t n,
             const AdamWParams& p, cudaStream_t stream, const char* op) {
  if (n <= 0) return;
  TS_CUDA_ARG_CHECK(p.step >= 1,
                    std::string(op) + ": step is 1-based, got " + std::to_string(p.step));
  const auto correction = [&](float beta) {
    return static_cast<float>(1.0 -
                              std::pow(static_cast<double>(beta), static_cast<double>(p.step)));
  };
  const AdamWStep step{p.lr,
                       p.beta1,
                       p.beta2,
                       p.eps,
                       p.weight_decay,
                       p.grad_scale,
                       p.l2,
                       correction(p.beta1),
                       correction(p.beta2)};
  adamw_kernel<<<grid_for(n), kElementwiseThreads, 0, stream>>>(params, params16, grads, m, v, n,
                                                                step);
  TS_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace

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
  detail::adamw_t(params, static_cast<float*>(nullptr), grads, m, v, n, p, detail::to_cuda(stream),
                  "cuda::adamw_update");
}

double sum_squares16(DType dtype, const uint16_t* x, int64_t n, Stream stream) {
  return detail::dispatch16(dtype, "cuda::sum_squares16", [&](auto tag) {
    return detail::reduce_to_host<decltype(tag), true>(detail::as_device16<decltype(tag)>(x), n,
                                                       detail::to_cuda(stream));
  });
}

void adamw_update16(DType dtype, float* master, uint16_t* params16, const uint16_t* grads16,
                    float* m, float* v, int64_t n, const AdamWParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::adamw_update16";
  TS_CUDA_ARG_CHECK(n <= 0 || params16 != nullptr, std::string(kOp) + ": params16 is required");
  detail::dispatch16(dtype, kOp, [&](auto tag) {
    using T = decltype(tag);
    detail::adamw_t(master, detail::as_device16<T>(params16), detail::as_device16<T>(grads16), m, v,
                    n, p, detail::to_cuda(stream), kOp);
  });
}

}  // namespace tessera::kernels::cuda
