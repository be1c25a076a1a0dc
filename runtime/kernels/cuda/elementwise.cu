// Element-wise ops: GELU (tanh form) and the residual add, forward and backward. Grid-stride
// loops over n, so any n (odd, zero, larger than one grid) is covered.
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr float kSqrt2OverPi = 0.7978845608028654f;
inline constexpr float kGeluCubic = 0.044715f;

// ---- kernels --------------------------------------------------------------------------------

#define TS_GRID_STRIDE(i, n)                                                \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n) {
  TS_GRID_STRIDE(i, n) {
    const float x = load_f(inp + i);
    const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    store_f(out + i, 0.5f * x * (1.0f + tanhf(u)));
  }
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  TS_GRID_STRIDE(i, n) {
    const float x = load_f(inp + i);
    const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    const float th = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    store_f(dinp + i, load_f(dinp + i) + load_f(dout + i) * grad);
  }
}

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n) {
  TS_GRID_STRIDE(i, n) { store_f(out + i, load_f(a + i) + load_f(b + i)); }
}

// da and db may be the same buffer (both branches of a block feeding one gradient): each
// element is then read and written twice by the same thread, in order.
template <typename T>
__global__ void residual_backward_kernel(T* da, T* db, const T* dout, int64_t n) {
  TS_GRID_STRIDE(i, n) {
    const float g = load_f(dout + i);
    store_f(da + i, load_f(da + i) + g);
    store_f(db + i, load_f(db + i) + g);
  }
}

#undef TS_GRID_STRIDE

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void gelu_forward(float* out, const float* inp, int64_t n, Stream stream) {
  if (n <= 0) return;
  detail::gelu_forward_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                                detail::to_cuda(stream)>>>(out, inp, n);
  TS_CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, Stream stream) {
  if (n <= 0) return;
  detail::gelu_backward_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                                 detail::to_cuda(stream)>>>(dinp, inp, dout, n);
  TS_CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}

void residual_forward(float* out, const float* a, const float* b, int64_t n, Stream stream) {
  if (n <= 0) return;
  detail::residual_forward_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                                    detail::to_cuda(stream)>>>(out, a, b, n);
  TS_CUDA_CHECK_LAUNCH("residual_forward_kernel");
}

void residual_backward(float* da, float* db, const float* dout, int64_t n, Stream stream) {
  if (n <= 0) return;
  detail::residual_backward_kernel<<<detail::grid_for(n), detail::kElementwiseThreads, 0,
                                     detail::to_cuda(stream)>>>(da, db, dout, n);
  TS_CUDA_CHECK_LAUNCH("residual_backward_kernel");
}

}  // namespace tessera::kernels::cuda
