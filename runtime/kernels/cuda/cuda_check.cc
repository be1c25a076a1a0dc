// The throw half of cuda_check.cuh, compiled by the host compiler so fmt stays out of nvcc.
// Each builds exactly what TS_THROW builds, with the caller's file and line.
#include "runtime/kernels/cuda/cuda_check.cuh"

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::kernels::cuda::detail {

void throw_cuda_error(const char* call, cudaError_t status, const char* file, int line) {
  // A failed launch leaves its error pending; clear it so the next check reports its own call.
  cudaGetLastError();
  throw CudaError(fmt::format("{} failed: {} ({})", call, cudaGetErrorString(status),
                              cudaGetErrorName(status)) +
                  ::tessera::detail::where(file, line));
}

void throw_cublas_error(const char* call, cublasStatus_t status, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: {} (cublasStatus {})", call,
                              cublasGetStatusString(status), static_cast<int>(status)) +
                  ::tessera::detail::where(file, line));
}

void throw_invalid_argument(const std::string& message, const char* file, int line) {
  throw InvalidArgument(message + ::tessera::detail::where(file, line));
}

}  // namespace tessera::kernels::cuda::detail
