// GEMM through cuBLAS (row-major via the transpose identity) and the linear layer built on
// it: the bias add and the bias gradient are the only kernels of our own.
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

}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix
// read as column-major is its transpose: so cuBLAS gets B first, A second, and the same
// transpose flags, with M and N swapped.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          Stream stream) {
  if (M == 0 || N == 0) return;
  for (auto [value, name] : {std::pair{M, "M"}, std::pair{N, "N"}, std::pair{K, "K"},
                             std::pair{lda, "lda"}, std::pair{ldb, "ldb"}, std::pair{ldc, "ldc"}}) {
    detail::check_int_range(value, name);
  }
  cublasHandle_t handle = detail::cublas_handle(detail::to_cuda(stream));
  TS_CUBLAS_CHECK(cublasSgemm(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
      static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc)));
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, Stream stream) {
  gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC, stream);
  if (bias != nullptr && N * OC > 0) {
    detail::add_bias_kernel<<<detail::grid_for(N * OC), detail::kElementwiseThreads, 0,
                              detail::to_cuda(stream)>>>(out, bias, N, OC);
    TS_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, Stream stream) {
  if (dinp != nullptr)
    gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C, stream);
  if (dweight != nullptr) {
    gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C, stream);
  }
  if (dbias != nullptr && OC > 0) {
    const dim3 block(detail::kWarpSize, detail::kColumnBlockRows);
    const auto blocks = static_cast<unsigned>((OC + detail::kWarpSize - 1) / detail::kWarpSize);
    detail::bias_backward_kernel<<<blocks, block, 0, detail::to_cuda(stream)>>>(dbias, dout, N, OC);
    TS_CUDA_CHECK_LAUNCH("bias_backward_kernel");
  }
}

}  // namespace tessera::kernels::cuda
