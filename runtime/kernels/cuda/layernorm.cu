// Layer normalisation: one warp per row for the forward and for the input gradient; the
// weight and bias gradients are column sums over rows, done by a separate kernel that owns
// whole columns so the sum is deterministic (no atomics).
#include <climits>
#include <string>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr float kLayerNormEps = 1e-5f;
inline constexpr int kRowsPerBlock = 8;  // one warp each
inline constexpr int kParamGradRowLanes = 16;

// ---- kernels --------------------------------------------------------------------------------

// Two passes over the row for mean and variance (not E[x^2] - mean^2, which cancels badly
// when |mean| >> std); the row is small enough to stay in L1 between passes.
template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp,
                                         const T* weight, const T* bias, int64_t N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  if (row >= N) return;  // whole warp leaves together, so the shuffles below stay full
  const T* x = inp + row * C;
  T* y = out + row * C;

  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) sum += load_f(x + c);
  const float m = warp_sum(sum) / C;
  float sum_sq = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float d = load_f(x + c) - m;
    sum_sq += d * d;
  }
  const float s = rsqrtf(warp_sum(sum_sq) / C + kLayerNormEps);
  for (int c = lane; c < C; c += kWarpSize) {
    const float b = bias != nullptr ? load_f(bias + c) : 0.0f;
    store_f(y + c, (load_f(x + c) - m) * s * load_f(weight + c) + b);
  }
  if (lane == 0) {
    if (mean != nullptr) mean[row] = m;
    if (rstd != nullptr) rstd[row] = s;
  }
}

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight.
template <typename T>
__global__ void layernorm_backward_input_kernel(T* dinp, const T* dout, const T* inp,
                                                const T* weight, const float* mean,
                                                const float* rstd, int64_t N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const T* x = inp + row * C;
  const T* dy = dout + row * C;
  T* dx = dinp + row * C;
  const float m = mean[row];
  const float s = rstd[row];

  float sum_g = 0.0f;
  float sum_g_xhat = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float g = load_f(dy + c) * load_f(weight + c);
    sum_g += g;
    sum_g_xhat += g * (load_f(x + c) - m) * s;
  }
  const float mean_g = warp_sum(sum_g) / C;
  const float mean_g_xhat = warp_sum(sum_g_xhat) / C;
  for (int c = lane; c < C; c += kWarpSize) {
    const float g = load_f(dy + c) * load_f(weight + c);
    const float xhat = (load_f(x + c) - m) * s;
    store_f(dx + c, load_f(dx + c) + s * (g - mean_g - xhat * mean_g_xhat));
  }
}

// dweight[c] += sum_rows dout * xhat, dbias[c] += sum_rows dout. A block owns 32 columns
// (threadIdx.x: coalesced row reads) and splits the rows over threadIdx.y; the partial sums
// meet in shared memory in a fixed order.
template <typename T>
__global__ void layernorm_backward_params_kernel(T* dweight, T* dbias, const T* dout, const T* inp,
                                                 const float* mean, const float* rstd, int64_t N,
                                                 int C) {
  __shared__ float partial_w[kParamGradRowLanes][kWarpSize + 1];
  __shared__ float partial_b[kParamGradRowLanes][kWarpSize + 1];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  float sum_w = 0.0f;
  float sum_b = 0.0f;
  if (c < C) {
    for (int64_t row = threadIdx.y; row < N; row += kParamGradRowLanes) {
      const float dy = load_f(dout + row * C + c);
      sum_w += dy * (load_f(inp + row * C + c) - mean[row]) * rstd[row];
      sum_b += dy;
    }
  }
  partial_w[threadIdx.y][threadIdx.x] = sum_w;
  partial_b[threadIdx.y][threadIdx.x] = sum_b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float total_w = 0.0f;
    float total_b = 0.0f;
    for (int r = 0; r < kParamGradRowLanes; ++r) {
      total_w += partial_w[r][threadIdx.x];
      total_b += partial_b[r][threadIdx.x];
    }
    if (dweight != nullptr) store_f(dweight + c, load_f(dweight + c) + total_w);
    if (dbias != nullptr) store_f(dbias + c, load_f(dbias + c) + total_b);
  }
}

unsigned row_blocks(int64_t N) {
  return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
}

void check_shape(int64_t N, int64_t C, const char* op) {
  TS_CUDA_ARG_CHECK(
      N >= 0 && C > 0 && C <= INT_MAX,
      std::string(op) + ": bad shape N=" + std::to_string(N) + " C=" + std::to_string(C));
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, Stream stream) {
  detail::check_shape(N, C, "cuda::layernorm_forward");
  if (N == 0) return;
  detail::
      layernorm_forward_kernel<<<detail::row_blocks(N), detail::kRowsPerBlock * detail::kWarpSize,
                                 0, detail::to_cuda(stream)>>>(out, mean, rstd, inp, weight, bias,
                                                               N, static_cast<int>(C));
  TS_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t N, int64_t C, Stream stream) {
  detail::check_shape(N, C, "cuda::layernorm_backward");
  if (N == 0) return;
  const cudaStream_t s = detail::to_cuda(stream);
  if (dinp != nullptr) {
    detail::layernorm_backward_input_kernel<<<detail::row_blocks(N),
                                              detail::kRowsPerBlock * detail::kWarpSize, 0, s>>>(
        dinp, dout, inp, weight, mean, rstd, N, static_cast<int>(C));
    TS_CUDA_CHECK_LAUNCH("layernorm_backward_input_kernel");
  }
  if (dweight != nullptr || dbias != nullptr) {
    const dim3 block(detail::kWarpSize, detail::kParamGradRowLanes);
    const auto blocks = static_cast<unsigned>((C + detail::kWarpSize - 1) / detail::kWarpSize);
    detail::layernorm_backward_params_kernel<<<blocks, block, 0, s>>>(
        dweight, dbias, dout, inp, mean, rstd, N, static_cast<int>(C));
    TS_CUDA_CHECK_LAUNCH("layernorm_backward_params_kernel");
  }
}

}  // namespace tessera::kernels::cuda
