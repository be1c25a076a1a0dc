// GEMM through cuBLAS (row-major via the transpose identity) and the linear layer built on
// it, for f32 and for 16-bit (bf16, f16) operands with f32 outputs: the bias add and the bias
// gradient are the only kernels of our own, and they stay f32 in both.
#include <climits>
#include <string>
#include <utility>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

// ---- kernels --------------------------------------------------------------------------------

template <typename T>
__global__ void add_bias_kernel(T* out, const T* bias, int64_t N, int64_t OC) {
  const int64_t total = N * OC;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    store_f(out + i, load_f(out + i) + load_f(bias + i % OC));
  }
}

// Column sums of a [N, OC] matrix added into dbias[OC]. A block owns 32 adjacent columns
// (threadIdx.x, so row reads are coalesced) and splits the rows over threadIdx.y; partial
// sums meet in shared memory in a fixed order, so the result is deterministic.
inline constexpr int kColumnBlockRows = 16;

template <typename T>
__global__ void bias_backward_kernel(T* dbias, const T* dout, int64_t N, int64_t OC) {
  __shared__ float partial[kColumnBlockRows][kWarpSize + 1];
  const int64_t col = blockIdx.x * int64_t{kWarpSize} + threadIdx.x;
  float sum = 0.0f;
  if (col < OC) {
    for (int64_t row = threadIdx.y; row < N; row += kColumnBlockRows) {
      sum += load_f(dout + row * OC + col);
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < OC) {
    float total = 0.0f;
    for (int r = 0; r < kColumnBlockRows; ++r) total += partial[r][threadIdx.x];
    store_f(dbias + col, load_f(dbias + col) + total);
  }
}

}  // namespace

void check_int_range(int64_t value, const char* what) {
  TS_CUDA_ARG_CHECK(value >= 0 && value <= INT_MAX,
                    std::string("cuda::gemm: ") + what + " = " + std::to_string(value) +
                        " is outside what cuBLAS's 32-bit interface takes");
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix
// read as column-major is its transpose: so cuBLAS gets B first, A second, and the same
// transpose flags, with M and N swapped. CUBLAS_COMPUTE_32F with the default math mode (set in
// device.cc) is full FP32 for float inputs (no TF32, as cublasSgemm) and an f32 accumulator
// on tensor cores for 16-bit ones.
template <typename T>
void gemm_t(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const T* A,
            int64_t lda, const T* B, int64_t ldb, float beta, float* C, int64_t ldc,
            cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  for (auto [value, name] : {std::pair{M, "M"}, std::pair{N, "N"}, std::pair{K, "K"},
                             std::pair{lda, "lda"}, std::pair{ldb, "ldb"}, std::pair{ldc, "ldc"}}) {
    check_int_range(value, name);
  }
  TS_CUBLAS_CHECK(cublasGemmEx(cublas_handle(stream), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
                               static_cast<int>(M), static_cast<int>(K), &alpha, B,
                               kCudaDataType<T>, static_cast<int>(ldb), A, kCudaDataType<T>,
                               static_cast<int>(lda), &beta, C, CUDA_R_32F, static_cast<int>(ldc),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template void gemm_t<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t, cudaStream_t);
template void gemm_t<__half>(bool, bool, int64_t, int64_t, int64_t, float, const __half*, int64_t,
                             const __half*, int64_t, float, float*, int64_t, cudaStream_t);
template void gemm_t<__nv_bfloat16>(bool, bool, int64_t, int64_t, int64_t, float,
                                    const __nv_bfloat16*, int64_t, const __nv_bfloat16*, int64_t,
                                    float, float*, int64_t, cudaStream_t);

namespace {

// The linear layer for GEMM operands of type T (outputs, bias and its gradient are f32).
template <typename T>
void matmul_forward_t(float* out, const T* inp, const T* weight, const float* bias, int64_t N,
                      int64_t C, int64_t OC, cudaStream_t stream) {
  gemm_t(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC, stream);
  if (bias != nullptr && N * OC > 0) {
    add_bias_kernel<<<grid_for(N * OC), kElementwiseThreads, 0, stream>>>(out, bias, N, OC);
    TS_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

// dout_gemm is what the two GEMMs read (dout itself, or its 16-bit rounding); the bias
// gradient sums dout.
template <typename T>
void matmul_backward_t(float* dinp, float* dweight, float* dbias, const T* dout_gemm,
                       const float* dout, const T* inp, const T* weight, int64_t N, int64_t C,
                       int64_t OC, cudaStream_t stream) {
  if (dinp != nullptr)
    gemm_t(false, false, N, C, OC, 1.0f, dout_gemm, OC, weight, C, 1.0f, dinp, C, stream);
  if (dweight != nullptr)
    gemm_t(true, false, OC, C, N, 1.0f, dout_gemm, OC, inp, C, 1.0f, dweight, C, stream);
  if (dbias != nullptr && OC > 0) {
    const dim3 block(kWarpSize, kColumnBlockRows);
    const auto blocks = static_cast<unsigned>((OC + kWarpSize - 1) / kWarpSize);
    bias_backward_kernel<<<blocks, block, 0, stream>>>(dbias, dout, N, OC);
    TS_CUDA_CHECK_LAUNCH("bias_backward_kernel");
  }
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          Stream stream) {
  detail::gemm_t(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                 detail::to_cuda(stream));
}

void gemm16(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C,
            int64_t ldc, Stream stream) {
  detail::dispatch16(dtype, "cuda::gemm16", [&](auto tag) {
    using T = decltype(tag);
    detail::gemm_t(trans_a, trans_b, M, N, K, alpha, detail::as_device16<T>(A), lda,
                   detail::as_device16<T>(B), ldb, beta, C, ldc, detail::to_cuda(stream));
  });
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, Stream stream) {
  detail::matmul_forward_t(out, inp, weight, bias, N, C, OC, detail::to_cuda(stream));
}

void matmul_forward16(DType dtype, float* out, const uint16_t* inp, const uint16_t* weight,
                      const float* bias, int64_t N, int64_t C, int64_t OC, Stream stream) {
  detail::dispatch16(dtype, "cuda::matmul_forward16", [&](auto tag) {
    using T = decltype(tag);
    detail::matmul_forward_t(out, detail::as_device16<T>(inp), detail::as_device16<T>(weight), bias,
                             N, C, OC, detail::to_cuda(stream));
  });
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, Stream stream) {
  detail::matmul_backward_t(dinp, dweight, dbias, dout, dout, inp, weight, N, C, OC,
                            detail::to_cuda(stream));
}

void matmul_backward16(DType dtype, float* dinp, float* dweight, float* dbias,
                       const uint16_t* dout16, const float* dout, const uint16_t* inp,
                       const uint16_t* weight, int64_t N, int64_t C, int64_t OC, Stream stream) {
  detail::dispatch16(dtype, "cuda::matmul_backward16", [&](auto tag) {
    using T = decltype(tag);
    detail::matmul_backward_t(dinp, dweight, dbias, detail::as_device16<T>(dout16), dout,
                              detail::as_device16<T>(inp), detail::as_device16<T>(weight), N, C, OC,
                              detail::to_cuda(stream));
  });
}

}  // namespace tessera::kernels::cuda
