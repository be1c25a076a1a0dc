// Element-wise ops: GELU (tanh form) and the residual add, forward and backward, and the
// f32 <-> 16-bit conversions of mixed precision. Grid-stride loops over n, so any n (odd,
// zero, larger than one grid) is covered.
#include <string>

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

__global__ void bias_add_kernel(float* out, const float* bias, int64_t C, int64_t n) {
  TS_GRID_STRIDE(i, n) { out[i] += bias[i % C]; }
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

// dst = src converted through f32: rounds to nearest even into a 16-bit type, widens exactly
// out of one.
template <typename Src, typename Dst>
__global__ void convert_kernel(Dst* dst, const Src* src, int64_t n) {
  TS_GRID_STRIDE(i, n) { store_f(dst + i, load_f(src + i)); }
}

template <typename T>
__global__ void accumulate_kernel(T* dst, const float* src, int64_t n) {
  TS_GRID_STRIDE(i, n) { store_f(dst + i, load_f(dst + i) + src[i]); }
}

#undef TS_GRID_STRIDE

// Queues kernel(args..., n) over n elements on stream; n <= 0 queues nothing.
template <typename... Params, typename... Args>
void launch_elementwise(void (*kernel)(Params...), const char* name, int64_t n, Stream stream,
                        Args... args) {
  if (n <= 0) return;
  kernel<<<grid_for(n), kElementwiseThreads, 0, to_cuda(stream)>>>(args..., n);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw_cuda_error((std::string("launch of ") + name).c_str(), status, __FILE__, __LINE__);
  }
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void gelu_forward(float* out, const float* inp, int64_t n, Stream stream) {
  detail::launch_elementwise(detail::gelu_forward_kernel<float>, "gelu_forward_kernel", n, stream,
                             out, inp);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, Stream stream) {
  detail::launch_elementwise(detail::gelu_backward_kernel<float>, "gelu_backward_kernel", n, stream,
                             dinp, inp, dout);
}

void residual_forward(float* out, const float* a, const float* b, int64_t n, Stream stream) {
  detail::launch_elementwise(detail::residual_forward_kernel<float>, "residual_forward_kernel", n,
                             stream, out, a, b);
}

void bias_add(float* out, const float* bias, int64_t N, int64_t C, Stream stream) {
  detail::launch_elementwise(detail::bias_add_kernel, "bias_add_kernel", N * C, stream, out, bias,
                             C);
}

void residual_backward(float* da, float* db, const float* dout, int64_t n, Stream stream) {
  detail::launch_elementwise(detail::residual_backward_kernel<float>, "residual_backward_kernel", n,
                             stream, da, db, dout);
}

void to_16(DType dtype, const float* src, uint16_t* dst, int64_t n, Stream stream) {
  detail::dispatch16(dtype, "cuda::to_16", [&](auto tag) {
    using T = decltype(tag);
    detail::launch_elementwise(detail::convert_kernel<float, T>, "convert_kernel", n, stream,
                               detail::as_device16<T>(dst), src);
  });
}

void from_16(DType dtype, const uint16_t* src, float* dst, int64_t n, Stream stream) {
  detail::dispatch16(dtype, "cuda::from_16", [&](auto tag) {
    using T = decltype(tag);
    detail::launch_elementwise(detail::convert_kernel<T, float>, "convert_kernel", n, stream, dst,
                               detail::as_device16<T>(src));
  });
}

void accumulate_16(DType dtype, uint16_t* dst, const float* src, int64_t n, Stream stream) {
  detail::dispatch16(dtype, "cuda::accumulate_16", [&](auto tag) {
    using T = decltype(tag);
    detail::launch_elementwise(detail::accumulate_kernel<T>, "accumulate_kernel", n, stream,
                               detail::as_device16<T>(dst), src);
  });
}

}  // namespace tessera::kernels::cuda
