// Token + position embedding (f32 tables, or 16-bit ones with an f32 output). Backward: dwpe is a
// per-(t, c) sum over the batch that one thread owns (deterministic); dwte scatters by token id
// with float atomicAdd, because a token can appear at many positions and a deterministic scheme
// would need a sort by token.
#include <climits>
#include <string>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

// ---- kernels --------------------------------------------------------------------------------

// Tables of type T (f32 or 16-bit); the sum is f32.
template <typename T>
__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const T* wte,
                                         const T* wpe, int64_t BT, int T_, int C) {
  const int64_t total = BT * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t bt = i / C;
    const int c = static_cast<int>(i % C);
    const int t = static_cast<int>(bt % T_);
    const int64_t token = tokens[bt];
    store_f(out + i, load_f(wte + token * C + c) + load_f(wpe + int64_t{t} * C + c));
  }
}

template <typename T>
__global__ void embedding_backward_wte_kernel(T* dwte, const T* dout, const int32_t* tokens,
                                              int64_t BT, int C) {
  const int64_t total = BT * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t bt = i / C;
    const int c = static_cast<int>(i % C);
    atomicAdd(dwte + int64_t{tokens[bt]} * C + c, load_f(dout + i));
  }
}

template <typename T>
__global__ void embedding_backward_wpe_kernel(T* dwpe, const T* dout, int B, int T_, int C) {
  const int64_t total = int64_t{T_} * C;
  const int64_t batch_stride = int64_t{T_} * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    float sum = 0.0f;
    for (int b = 0; b < B; ++b) sum += load_f(dout + b * batch_stride + i);
    store_f(dwpe + i, load_f(dwpe + i) + sum);
  }
}

void check_shape(int B, int T_, int C, const char* op) {
  TS_CUDA_ARG_CHECK(B >= 0 && T_ >= 0 && C > 0,
                    std::string(op) + ": bad shape B=" + std::to_string(B) +
                        " T=" + std::to_string(T_) + " C=" + std::to_string(C));
}

template <typename T>
void embedding_forward_t(float* out, const int32_t* tokens, const T* wte, const T* wpe, int B,
                         int T_, int C, cudaStream_t stream, const char* op) {
  check_shape(B, T_, C, op);
  const int64_t BT = int64_t{B} * T_;
  if (BT == 0) return;
  embedding_forward_kernel<<<grid_for(BT * C), kElementwiseThreads, 0, stream>>>(out, tokens, wte,
                                                                                 wpe, BT, T_, C);
  TS_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, Stream stream) {
  detail::embedding_forward_t(out, tokens, wte, wpe, B, T, C, detail::to_cuda(stream),
                              "cuda::embedding_forward");
}

void embedding_forward16(DType dtype, float* out, const int32_t* tokens, const uint16_t* wte,
                         const uint16_t* wpe, int B, int T, int C, Stream stream) {
  detail::dispatch16(dtype, "cuda::embedding_forward16", [&](auto tag) {
    using T16 = decltype(tag);
    detail::embedding_forward_t(out, tokens, detail::as_device16<T16>(wte),
                                detail::as_device16<T16>(wpe), B, T, C, detail::to_cuda(stream),
                                "cuda::embedding_forward16");
  });
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C, Stream stream) {
  detail::check_shape(B, T, C, "cuda::embedding_backward");
  const int64_t BT = int64_t{B} * T;
  if (BT == 0) return;
  const cudaStream_t s = detail::to_cuda(stream);
  if (dwte != nullptr) {
    detail::embedding_backward_wte_kernel<<<detail::grid_for(BT * C), detail::kElementwiseThreads,
                                            0, s>>>(dwte, dout, tokens, BT, C);
    TS_CUDA_CHECK_LAUNCH("embedding_backward_wte_kernel");
  }
  if (dwpe != nullptr) {
    detail::embedding_backward_wpe_kernel<<<detail::grid_for(int64_t{T} * C),
                                            detail::kElementwiseThreads, 0, s>>>(dwpe, dout, B, T,
                                                                                 C);
    TS_CUDA_CHECK_LAUNCH("embedding_backward_wpe_kernel");
  }
}

}  // namespace tessera::kernels::cuda
