// CUDA and cuBLAS status codes become tessera::CudaError, and bad arguments to a launcher
// tessera::InvalidArgument, at the call site: the message names the call, the error string
// and file:line, as TS_THROW would.
//
// Why not TS_THROW itself: nvcc 13's front end rejects fmt 9's consteval format strings in
// C++20, so no fmt::format may be instantiated in a .cu file. The macros pass the call site
// to throw functions compiled by the host compiler (cuda_check.cc), which build the same
// message TS_THROW builds. Plain C++, usable from .cc files too.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>

namespace tessera::kernels::cuda::detail {
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t status, const char* file,
                                   int line);
[[noreturn]] void throw_cublas_error(const char* call, cublasStatus_t status, const char* file,
                                     int line);
[[noreturn]] void throw_invalid_argument(const std::string& message, const char* file, int line);
}  // namespace tessera::kernels::cuda::detail

#define TS_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    const cudaError_t ts_cuda_status_ = (call);                                            \
    if (ts_cuda_status_ != cudaSuccess) {                                                  \
      ::tessera::kernels::cuda::detail::throw_cuda_error(#call, ts_cuda_status_, __FILE__, \
                                                         __LINE__);                        \
    }                                                                                      \
  } while (0)

#define TS_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                         \
    const cublasStatus_t ts_cublas_status_ = (call);                                           \
    if (ts_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                          \
      ::tessera::kernels::cuda::detail::throw_cublas_error(#call, ts_cublas_status_, __FILE__, \
                                                           __LINE__);                          \
    }                                                                                          \
  } while (0)

// After every kernel launch (kernel_name: a string literal). Catches bad launch
// configurations (grid, shared memory) at the launch rather than at some later, unrelated
// call; faults inside a kernel still surface at the next synchronising call, as CUDA reports
// them.
#define TS_CUDA_CHECK_LAUNCH(kernel_name)                                                        \
  do {                                                                                           \
    const cudaError_t ts_launch_status_ = cudaGetLastError();                                    \
    if (ts_launch_status_ != cudaSuccess) {                                                      \
      ::tessera::kernels::cuda::detail::throw_cuda_error("launch of " kernel_name,               \
                                                         ts_launch_status_, __FILE__, __LINE__); \
    }                                                                                            \
  } while (0)

// TS_CHECK for .cu files: message is a std::string (built with std::to_string, not fmt).
#define TS_CUDA_ARG_CHECK(cond, message)                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      ::tessera::kernels::cuda::detail::throw_invalid_argument((message), __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)
