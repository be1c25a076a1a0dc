// Device-side building blocks shared by the op files: warp and block reductions, element
// loads that compute in float whatever the storage type (so fp16/bf16 kernels are the same
// templates instantiated again), the dispatch from a DType to those 16-bit types, and
// launch-size helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "runtime/core/dtype.h"
#include "runtime/kernels/cuda/context.h"
#include "runtime/kernels/cuda/cuda_check.cuh"

namespace tessera::kernels::cuda::detail {

inline constexpr int kWarpSize = 32;
inline constexpr unsigned kFullMask = 0xffffffffu;

// Threads per block of the element-wise kernels.
inline constexpr int kElementwiseThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill any current GPU many times
// over, capped so the grid size never overflows; the loop covers the rest.
inline int grid_for(int64_t n, int threads = kElementwiseThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 16));
}

template <typename T>
__device__ __forceinline__ float load_f(const T* p) {
  return static_cast<float>(*p);
}
template <typename T>
__device__ __forceinline__ void store_f(T* p, float v) {
  *p = static_cast<T>(v);
}
// The 16-bit types through their intrinsics: widening is exact, narrowing rounds to nearest
// even (as runtime/core/half.h). Both are inline PTX, so --use_fast_math's flush-to-zero does
// not touch them.
template <>
__device__ __forceinline__ float load_f(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ void store_f(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// The cuBLAS data type of an element type.
template <typename T>
inline constexpr cudaDataType_t kCudaDataType = CUDA_R_32F;
template <>
inline constexpr cudaDataType_t kCudaDataType<__half> = CUDA_R_16F;
template <>
inline constexpr cudaDataType_t kCudaDataType<__nv_bfloat16> = CUDA_R_16BF;

// Calls fn(T{}) with T the CUDA type of a 16-bit dtype (__nv_bfloat16 for BF16, __half for
// F16) and returns what it returns; any other dtype is an InvalidArgument naming `op`. The
// public 16-bit functions take uint16_t buffers and reinterpret them as T* inside fn.
template <typename Fn>
auto dispatch16(DType dtype, const char* op, Fn&& fn) {
  TS_CUDA_ARG_CHECK(
      dtype == DType::BF16 || dtype == DType::F16,
      std::string(op) + ": dtype must be bf16 or f16, got " + std::string(dtype_name(dtype)));
  return dtype == DType::BF16 ? fn(__nv_bfloat16{}) : fn(__half{});
}

static_assert(sizeof(__half) == sizeof(uint16_t) && sizeof(__nv_bfloat16) == sizeof(uint16_t));
template <typename T>
const T* as_device16(const uint16_t* p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
T* as_device16(uint16_t* p) {
  return reinterpret_cast<T*>(p);
}

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// Block-wide reduction for blocks whose size is a multiple of 32 (at most 1024). Every thread
// gets the result. `shared` must hold 32 values; the leading __syncthreads makes back-to-back
// calls with the same buffer safe (everyone has read the previous result before it is
// overwritten).
template <typename V, typename Op>
__device__ V block_reduce(V v, V* shared, V identity, Op op) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    V w = lane < num_warps ? shared[lane] : identity;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      w = op(w, __shfl_xor_sync(kFullMask, w, offset));
    }
    if (lane == 0) shared[0] = w;
  }
  __syncthreads();
  return shared[0];
}

struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Sums f(x[i]) over n values on `stream` and returns it to the host (waits for the stream).
// Two fixed-shape passes, so the result is bit-identical from run to run. T: float, __half,
// __nv_bfloat16 (instantiated in optimizer.cu).
template <typename T, bool kSquare>
double reduce_to_host(const T* x, int64_t n, cudaStream_t stream);

// gemm() for any element type T of A and B (float, __half, __nv_bfloat16); C is always f32 and
// products accumulate in f32. Defined in matmul.cu.
template <typename T>
void gemm_t(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const T* A,
            int64_t lda, const T* B, int64_t ldb, float beta, float* C, int64_t ldc,
            cudaStream_t stream);

}  // namespace tessera::kernels::cuda::detail
