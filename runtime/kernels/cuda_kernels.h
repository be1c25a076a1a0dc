// CUDA kernels: the same ops as cpu_kernels.h, on device memory, llm.c style (raw device
// pointers, shapes, and the stream last). float only for now; fp16/bf16 arrive as further
// overloads of these functions over the same templated kernels in kernels/cuda/.
//
// This header includes no CUDA header, so CPU-only code can call it without an #ifdef: when
// tessera is built without CUDA (kernels/no_cuda/) device_count() returns 0 and every other
// function throws NotCompiled.
//
// Conventions, as on the CPU: row-major, a linear weight is [OC, C], backward kernels
// ACCUMULATE (+=) into every gradient. All pointers are device pointers unless noted. Work
// is queued on `stream` and runs asynchronously, except where a function returns a host
// value (sum_squares, lm_head_cross_entropy) or says it copies: those wait for the stream.
// Failures throw tessera::CudaError naming the call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cuda {

// An opaque cudaStream_t. nullptr is the legacy default stream.
using Stream = void*;

using cpu::AdamWParams;

// ---- devices, streams, copies -------------------------------------------------------------

// Number of visible CUDA devices; 0 when there is no device or no driver (never throws), so
// tests and callers can branch on it.
int device_count();
// Selects the current device of the calling thread.
void set_device(int device);
int current_device();
// Streams are blocking streams (they order after work on the legacy default stream, which
// is where the CUDA allocator's zero-fill runs), created on the current device.
Stream create_stream();
void destroy_stream(Stream stream);
// Waits on the host until everything queued on `stream` has finished.
void synchronize(Stream stream);
// Copies between host and device memory, ordered on `stream`; they return once the copy has
// finished, so host buffers may be pageable and reused at once.
void copy_to_device(void* device_dst, const void* host_src, size_t bytes, Stream stream = nullptr);
void copy_to_host(void* host_dst, const void* device_src, size_t bytes, Stream stream = nullptr);

// ---- ops ------------------------------------------------------------------------------------

// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major with leading dimensions, via cuBLAS in
// full FP32 (no TF32).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          Stream stream);

// out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias may be null.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, Stream stream);
// dinp += dout @ weight; dweight += dout^T @ inp; dbias += column sums of dout (a
// deterministic reduction). dinp, dweight, dbias may each be null (not wanted).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, Stream stream);

// Layer normalisation over the last dimension (eps 1e-5); mean and rstd [N] are saved for
// backward (either may be null in inference).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, Stream stream);
// dweight and dbias are reduced over rows deterministically (no atomics); any of dinp,
// dweight, dbias may be null.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t N, int64_t C, Stream stream);

// GELU, tanh approximation.
void gelu_forward(float* out, const float* inp, int64_t n, Stream stream);
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, Stream stream);

// out = a + b; da += dout, db += dout.
void residual_forward(float* out, const float* a, const float* b, int64_t n, Stream stream);
void residual_backward(float* da, float* db, const float* dout, int64_t n, Stream stream);

// Causal multi-head self-attention, same layout and memory contract as the CPU one: qkv
// [B,T,3C], out [B,T,C], lse [B,NH,T] is all that is saved. Flash-style kernels in tiles of 32
// queries x 32 keys; no scratch. Head size C/NH must be at most 128. Backward recomputes the
// probabilities from lse and writes dq and dk/dv from two kernels (one owns query rows, one
// owns key rows), so every dqkv element has a single writer: deterministic, no atomics.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       Stream stream);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, Stream stream);

// out[B,T,C] = wte[tokens[b,t]] + wpe[t]; tokens is a device buffer.
void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, Stream stream);
// dwpe is reduced over the batch deterministically; dwte uses float atomicAdd (a token that
// repeats sums in an unspecified order, so dwte may differ between runs in the last bits).
// Either gradient may be null.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C, Stream stream);

// Rows of logits the fused head computes at once: scratch holds kHeadChunkRows * V floats.
// Its own constant, larger than the CPU's: a GEMM of a few hundred rows leaves a GPU idle.
inline constexpr int64_t kHeadChunkRows = 512;

// Tied output head fused with softmax cross-entropy, chunked as on the CPU: per chunk the
// logits go to scratch, softmax/loss overwrite them in place with dlogits = (softmax -
// onehot) * grad_scale, then dx += dlogits @ wte and dwte += dlogits^T @ x. Backward runs
// when dx or dwte is non-null (each GEMM only for a non-null gradient). losses[N] (device,
// required) receives each row's loss; a target outside [0, V) gives a NaN loss. Returns the
// sum of the losses (reduced on the device in double, deterministically); waits for stream.
double lm_head_cross_entropy(float* dx, float* dwte, float* losses, const float* x,
                             const float* wte, const int32_t* targets, int64_t N, int64_t C,
                             int64_t V, float grad_scale, float* scratch, Stream stream);

// Sum of squares of n values, accumulated in double; deterministic; waits for stream.
double sum_squares(const float* x, int64_t n, Stream stream);
// x *= s.
void scale(float* x, float s, int64_t n, Stream stream);
// One AdamW step on n parameters, as cpu::adamw_update.
void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                  const AdamWParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
