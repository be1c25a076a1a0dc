// Per-thread CUDA context pieces shared by the op files: the cuBLAS handle and a small device
// buffer for reductions whose result goes back to the host. Both are created lazily, one per
// device per host thread, so threads never share a handle (cuBLAS handles are not meant to
// be used from two threads at once) and nothing is created in a process that never uses CUDA.
// Implemented in device.cc. Plain C++, usable from .cc and .cu files.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda::detail {

inline cudaStream_t to_cuda(Stream stream) { return static_cast<cudaStream_t>(stream); }

// The calling thread's handle for the current device, bound to `stream`.
cublasHandle_t cublas_handle(cudaStream_t stream);

// Blocks a two-pass reduction may use; the scratch below holds this many doubles plus one.
inline constexpr int kMaxReductionBlocks = 1024;
// The calling thread's reduction buffer on the current device. Users wait for their stream
// before returning, so one buffer per thread is never in use twice.
double* reduction_scratch();

}  // namespace tessera::kernels::cuda::detail
