#include <cfloat>
// The word embedding and the tied head in vocabulary row chunks (cuda_kernels.h), the CUDA side
// of cpu/vocab_chunks.cc. The embedding kernels repeat embedding.cu's arithmetic (one f32 add
// per contribution; the batch summed per (t, c) for dwpe; atomics for dwte); the cross-entropy
// keeps running softmax statistics across chunks, one block per row as the fused head's
// softmax kernel.
#include <string>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr int kFoldThreads = 512;

// ---- kernels --------------------------------------------------------------------------------

// The row of the chunk [row_begin, row_begin + rows) holding `token`, or -1.
__device__ __forceinline__ int64_t chunk_row(int32_t token, int64_t row_begin, int64_t rows) {
  const int64_t row = int64_t{token} - row_begin;
  return row >= 0 && row < rows ? row : -1;
}

template <typename T>
__global__ void position_embedding_forward_kernel(float* out, const T* wpe, int64_t BT, int T_,
                                                  int C) {
  const int64_t total = BT * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t bt = i / C;
    const int c = static_cast<int>(i % C);
    out[i] = load_f(wpe + (bt % T_) * C + c);
  }
}

// out holds wpe[t]: adding the token's row is embedding_forward_kernel's single add.
template <typename T>
__global__ void token_embedding_rows_forward_kernel(float* out, const int32_t* tokens,
                                                    const T* wte_rows, int64_t row_begin,
                                                    int64_t rows, int64_t N, int C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = chunk_row(tokens[i / C], row_begin, rows);
    if (row < 0) continue;
    const int c = static_cast<int>(i % C);
    out[i] = out[i] + load_f(wte_rows + row * C + c);
  }
}

__global__ void position_embedding_backward_kernel(float* dwpe, const float* dout, int B, int T_,
                                                   int C) {
  const int64_t total = int64_t{T_} * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    float sum = 0.0f;
    for (int b = 0; b < B; ++b) sum += dout[b * total + i];
    dwpe[i] += sum;
  }
}

__global__ void token_embedding_rows_backward_kernel(float* dwte_rows, const float* dout,
                                                     const int32_t* tokens, int64_t row_begin,
                                                     int64_t rows, int64_t N, int C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = chunk_row(tokens[i / C], row_begin, rows);
    if (row < 0) continue;
    atomicAdd(dwte_rows + row * C + i % C, dout[i]);
  }
}

// One block per row. Every thread reads the old maximum before the first block reduction,
// whose barriers order those reads before thread 0 writes the new statistics.
__global__ void cross_entropy_fold_kernel(float* max, float* sum, float* target_logit,
                                          const float* logits, const int32_t* targets, int64_t Vc,
                                          int64_t v_begin) {
  __shared__ float shared[kWarpSize];
  const float* row = logits + blockIdx.x * Vc;
  // sum 0: nothing folded yet, whatever max holds (buffers start zeroed).
  const bool empty = sum[blockIdx.x] == 0.0f;
  const float old_max = empty ? -INFINITY : max[blockIdx.x];

  float local_max = old_max;
  for (int64_t j = threadIdx.x; j < Vc; j += blockDim.x) local_max = fmaxf(local_max, row[j]);
  const float row_max = block_reduce(local_max, shared, -INFINITY, MaxOp{});

  float local_sum = 0.0f;
  for (int64_t j = threadIdx.x; j < Vc; j += blockDim.x) local_sum += expf(row[j] - row_max);
  const float chunk_sum = block_reduce(local_sum, shared, 0.0f, SumOp{});

  if (threadIdx.x == 0) {
    // The running sum is relative to the old maximum: unchanged when it did not grow, and
    // nothing to rescale before the first chunk (-inf).
    const float rescale = empty ? 0.0f : old_max == row_max ? 1.0f : expf(old_max - row_max);
    sum[blockIdx.x] = sum[blockIdx.x] * rescale + chunk_sum;
    max[blockIdx.x] = row_max;
    const int64_t target = chunk_row(targets[blockIdx.x], v_begin, Vc);
    if (target >= 0) target_logit[blockIdx.x] = row[target];
  }
}

__global__ void cross_entropy_finish_kernel(float* max_to_lse, float* losses, const float* sum,
                                            const float* target_logit, int64_t N) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < N;
       n += int64_t{gridDim.x} * blockDim.x) {
    const float lse = logf(sum[n]) + max_to_lse[n];
    max_to_lse[n] = lse;
    losses[n] = lse - target_logit[n];
  }
}

__global__ void cross_entropy_chunk_backward_kernel(float* logits, const float* lse,
                                                    const int32_t* targets, int64_t N, int64_t Vc,
                                                    int64_t v_begin, float grad_scale) {
  const int64_t total = N * Vc;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = i / Vc;
    const int64_t j = i % Vc;
    float g = expf(logits[i] - lse[n]);
    if (v_begin + j == targets[n]) g -= 1.0f;
    logits[i] = g * grad_scale;
  }
}

__global__ void cross_entropy_mask_empty_kernel(float* max, const float* sum, int64_t N) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < N;
       n += int64_t{gridDim.x} * blockDim.x) {
    if (sum[n] == 0.0f) max[n] = -FLT_MAX;
  }
}

__global__ void cross_entropy_rescale_kernel(float* max, float* sum, const float* global_max,
                                             int64_t N) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < N;
       n += int64_t{gridDim.x} * blockDim.x) {
    if (sum[n] != 0.0f && max[n] != global_max[n]) sum[n] *= expf(max[n] - global_max[n]);
    max[n] = global_max[n];
  }
}

// ---- launch helpers -----------------------------------------------------------------------------

void check_positions(int B, int T_, int C, const char* op) {
  TS_CUDA_ARG_CHECK(B >= 0 && T_ >= 0 && C > 0,
                    std::string(op) + ": bad shape B=" + std::to_string(B) +
                        " T=" + std::to_string(T_) + " C=" + std::to_string(C));
}

void check_rows(int64_t rows, int64_t N, int C, const char* op) {
  TS_CUDA_ARG_CHECK(rows >= 0 && N >= 0 && C > 0,
                    std::string(op) + ": bad shape rows=" + std::to_string(rows) +
                        " N=" + std::to_string(N) + " C=" + std::to_string(C));
}

void check_columns(int64_t N, int64_t Vc, const char* op) {
  TS_CUDA_ARG_CHECK(N >= 0 && Vc >= 0, std::string(op) + ": bad shape N=" + std::to_string(N) +
                                           " Vc=" + std::to_string(Vc));
}

template <typename T>
void position_embedding_forward_t(float* out, const T* wpe, int B, int T_, int C,
                                  cudaStream_t stream, const char* op) {
  check_positions(B, T_, C, op);
  const int64_t BT = int64_t{B} * T_;
  if (BT == 0) return;
  position_embedding_forward_kernel<<<grid_for(BT * C), kElementwiseThreads, 0, stream>>>(
      out, wpe, BT, T_, C);
  TS_CUDA_CHECK_LAUNCH("position_embedding_forward_kernel");
}

template <typename T>
void token_embedding_rows_forward_t(float* out, const int32_t* tokens, const T* wte_rows,
                                    int64_t row_begin, int64_t rows, int64_t N, int C,
                                    cudaStream_t stream, const char* op) {
  check_rows(rows, N, C, op);
  if (N == 0 || rows == 0) return;
  token_embedding_rows_forward_kernel<<<grid_for(N * C), kElementwiseThreads, 0, stream>>>(
      out, tokens, wte_rows, row_begin, rows, N, C);
  TS_CUDA_CHECK_LAUNCH("token_embedding_rows_forward_kernel");
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void position_embedding_forward(float* out, const float* wpe, int B, int T, int C, Stream stream) {
  detail::position_embedding_forward_t(out, wpe, B, T, C, detail::to_cuda(stream),
                                       "cuda::position_embedding_forward");
}

void position_embedding_forward16(DType dtype, float* out, const uint16_t* wpe, int B, int T, int C,
                                  Stream stream) {
  constexpr const char* kOp = "cuda::position_embedding_forward16";
  detail::dispatch16(dtype, kOp, [&](auto tag) {
    using T16 = decltype(tag);
    detail::position_embedding_forward_t(out, detail::as_device16<T16>(wpe), B, T, C,
                                         detail::to_cuda(stream), kOp);
  });
}

void token_embedding_rows_forward(float* out, const int32_t* tokens, const float* wte_rows,
                                  int64_t row_begin, int64_t rows, int64_t N, int C,
                                  Stream stream) {
  detail::token_embedding_rows_forward_t(out, tokens, wte_rows, row_begin, rows, N, C,
                                         detail::to_cuda(stream),
                                         "cuda::token_embedding_rows_forward");
}

void token_embedding_rows_forward16(DType dtype, float* out, const int32_t* tokens,
                                    const uint16_t* wte_rows, int64_t row_begin, int64_t rows,
                                    int64_t N, int C, Stream stream) {
  constexpr const char* kOp = "cuda::token_embedding_rows_forward16";
  detail::dispatch16(dtype, kOp, [&](auto tag) {
    using T16 = decltype(tag);
    detail::token_embedding_rows_forward_t(out, tokens, detail::as_device16<T16>(wte_rows),
                                           row_begin, rows, N, C, detail::to_cuda(stream), kOp);
  });
}

void position_embedding_backward(float* dwpe, const float* dout, int B, int T, int C,
                                 Stream stream) {
  detail::check_positions(B, T, C, "cuda::position_embedding_backward");
  if (int64_t{B} * T == 0) return;
  detail::position_embedding_backward_kernel<<<
      detail::grid_for(int64_t{T} * C), detail::kElementwiseThreads, 0, detail::to_cuda(stream)>>>(
      dwpe, dout, B, T, C);
  TS_CUDA_CHECK_LAUNCH("position_embedding_backward_kernel");
}

void token_embedding_rows_backward(float* dwte_rows, const float* dout, const int32_t* tokens,
                                   int64_t row_begin, int64_t rows, int64_t N, int C,
                                   Stream stream) {
  detail::check_rows(rows, N, C, "cuda::token_embedding_rows_backward");
  if (N == 0 || rows == 0) return;
  detail::token_embedding_rows_backward_kernel<<<
      detail::grid_for(N * C), detail::kElementwiseThreads, 0, detail::to_cuda(stream)>>>(
      dwte_rows, dout, tokens, row_begin, rows, N, C);
  TS_CUDA_CHECK_LAUNCH("token_embedding_rows_backward_kernel");
}

void cross_entropy_fold(float* max, float* sum, float* target_logit, const float* logits,
                        const int32_t* targets, int64_t N, int64_t Vc, int64_t v_begin,
                        Stream stream) {
  detail::check_columns(N, Vc, "cuda::cross_entropy_fold");
  if (N == 0 || Vc == 0) return;
  detail::cross_entropy_fold_kernel<<<static_cast<unsigned>(N), detail::kFoldThreads, 0,
                                      detail::to_cuda(stream)>>>(max, sum, target_logit, logits,
                                                                 targets, Vc, v_begin);
  TS_CUDA_CHECK_LAUNCH("cross_entropy_fold_kernel");
}

double cross_entropy_finish(float* max_to_lse, float* losses, const float* sum,
                            const float* target_logit, int64_t N, Stream stream) {
  constexpr const char* kOp = "cuda::cross_entropy_finish";
  TS_CUDA_ARG_CHECK(losses != nullptr, std::string(kOp) + ": losses [N] is a required buffer");
  detail::check_columns(N, 0, kOp);
  if (N == 0) return 0.0;
  const cudaStream_t s = detail::to_cuda(stream);
  detail::cross_entropy_finish_kernel<<<detail::grid_for(N), detail::kElementwiseThreads, 0, s>>>(
      max_to_lse, losses, sum, target_logit, N);
  TS_CUDA_CHECK_LAUNCH("cross_entropy_finish_kernel");
  return detail::reduce_to_host<float, false>(losses, N, s);
}

void cross_entropy_chunk_backward(float* logits, const float* lse, const int32_t* targets,
                                  int64_t N, int64_t Vc, int64_t v_begin, float grad_scale,
                                  Stream stream) {
  detail::check_columns(N, Vc, "cuda::cross_entropy_chunk_backward");
  if (N == 0 || Vc == 0) return;
  detail::cross_entropy_chunk_backward_kernel<<<
      detail::grid_for(N * Vc), detail::kElementwiseThreads, 0, detail::to_cuda(stream)>>>(
      logits, lse, targets, N, Vc, v_begin, grad_scale);
  TS_CUDA_CHECK_LAUNCH("cross_entropy_chunk_backward_kernel");
}

void cross_entropy_mask_empty(float* max, const float* sum, int64_t N, Stream stream) {
  if (N <= 0) return;
  detail::cross_entropy_mask_empty_kernel<<<detail::grid_for(N), detail::kElementwiseThreads, 0,
                                            detail::to_cuda(stream)>>>(max, sum, N);
  TS_CUDA_CHECK_LAUNCH("cross_entropy_mask_empty_kernel");
}

void cross_entropy_rescale(float* max, float* sum, const float* global_max, int64_t N,
                           Stream stream) {
  if (N <= 0) return;
  detail::cross_entropy_rescale_kernel<<<detail::grid_for(N), detail::kElementwiseThreads, 0,
                                         detail::to_cuda(stream)>>>(max, sum, global_max, N);
  TS_CUDA_CHECK_LAUNCH("cross_entropy_rescale_kernel");
}

}  // namespace tessera::kernels::cuda
