// CUDA kernels: the same ops as cpu_kernels.h, on device memory, llm.c style (raw device
// pointers, shapes, and the stream last), in f32; and the mixed-precision ops of cpu_mixed.h
// (the *16 functions at the end), with the same semantics, over the same templated kernels in
// kernels/cuda/.
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
#include <memory>

#include "runtime/core/dtype.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera {
class CopyEngine;  // runtime/core/copy_engine.h (not included: nvcc compiles this header)
}  // namespace tessera

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
// The copy engine of ZeRO-Offload's host tier on `device`: page-locked host memory
// (cudaHostAlloc) and two streams of its own, one per direction. Copies to the host first wait
// for the work queued on `producer` so far (the stream the gradients are computed on), so a
// bucket's copy starts as soon as its reduction lands without a host wait.
std::unique_ptr<CopyEngine> make_copy_engine(int device, Stream producer);
// Asynchronous on `stream`: bytes of device memory set to zero, or copied within the device.
void zero_async(void* device_ptr, size_t bytes, Stream stream);
void copy_on_device_async(void* device_dst, const void* device_src, size_t bytes, Stream stream);

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
// out [N, C] += bias [C].
void bias_add(float* out, const float* bias, int64_t N, int64_t C, Stream stream);
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

// The word embedding and the tied head in vocabulary row chunks, as cpu_kernels.h's
// (kernels/cuda/vocab_chunks.cu); tokens and targets are device buffers. The forwards add
// exactly as embedding_forward (the same bits); token_embedding_rows_backward scatters with
// float atomicAdd as embedding_backward does, and position_embedding_backward sums the batch
// per (t, c) as it does (deterministic).
void position_embedding_forward(float* out, const float* wpe, int B, int T, int C, Stream stream);
void token_embedding_rows_forward(float* out, const int32_t* tokens, const float* wte_rows,
                                  int64_t row_begin, int64_t rows, int64_t N, int C, Stream stream);
void position_embedding_backward(float* dwpe, const float* dout, int B, int T, int C,
                                 Stream stream);
void token_embedding_rows_backward(float* dwte_rows, const float* dout, const int32_t* tokens,
                                   int64_t row_begin, int64_t rows, int64_t N, int C,
                                   Stream stream);
// One block per row folds the chunk's logits [N, Vc] into max, sum and target_logit [N].
void cross_entropy_fold(float* max, float* sum, float* target_logit, const float* logits,
                        const int32_t* targets, int64_t N, int64_t Vc, int64_t v_begin,
                        Stream stream);
// losses [N] is required here (a device buffer); returns the loss sum, reduced in double
// deterministically; waits for stream.
double cross_entropy_finish(float* max_to_lse, float* losses, const float* sum,
                            const float* target_logit, int64_t N, Stream stream);
void cross_entropy_chunk_backward(float* logits, const float* lse, const int32_t* targets,
                                  int64_t N, int64_t Vc, int64_t v_begin, float grad_scale,
                                  Stream stream);
// Vocabulary parallelism's merge of the row statistics, as the CPU kernels of the same names.
void cross_entropy_mask_empty(float* max, const float* sum, int64_t N, Stream stream);
void cross_entropy_rescale(float* max, float* sum, const float* global_max, int64_t N,
                           Stream stream);

// Sum of squares of n values, accumulated in double; deterministic; waits for stream.
double sum_squares(const float* x, int64_t n, Stream stream);
// x *= s.
void scale(float* x, float s, int64_t n, Stream stream);
// One AdamW step on n parameters, as cpu::adamw_update (with p.l2 as in adamw_update16).
void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                  const AdamWParams& p, Stream stream);

// ---- mixed precision ------------------------------------------------------------------------
//
// The 16-bit side of mixed-precision training, as cpu_mixed.h: a 16-bit buffer is a device
// array of uint16_t holding bf16 or f16 bits, `dtype` (DType::BF16 or DType::F16; anything
// else throws InvalidArgument) says which; everything accumulates in f32; narrowing rounds to
// nearest even (the __nv_bfloat16 / __half intrinsics, bit-exact with runtime/core/half.h
// except that a NaN may come out with another payload). Backward kernels accumulate.

// C[M,N] (f32) = alpha * op(A) @ op(B) + beta * C with A and B 16-bit, as gemm(): cuBLAS
// GemmEx with an f32 accumulator (tensor cores).
void gemm16(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C,
            int64_t ldc, Stream stream);

// out[N,OC] (f32) = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias (f32) may be null.
void matmul_forward16(DType dtype, float* out, const uint16_t* inp, const uint16_t* weight,
                      const float* bias, int64_t N, int64_t C, int64_t OC, Stream stream);
// dinp[N,C] += dout16 @ weight; dweight[OC,C] += dout16^T @ inp (both f32); dbias[OC] +=
// column sums of dout (the f32 gradient dout16 was rounded from; read only for dbias).
// dinp, dweight, dbias may each be null.
void matmul_backward16(DType dtype, float* dinp, float* dweight, float* dbias,
                       const uint16_t* dout16, const float* dout, const uint16_t* inp,
                       const uint16_t* weight, int64_t N, int64_t C, int64_t OC, Stream stream);

// lm_head_cross_entropy with 16-bit x[N,C] and wte[V,C]: logits in f32 per chunk (scratch,
// kHeadChunkRows * V floats), softmax and loss in f32, dlogits rounded once into scratch16
// (kHeadChunkRows * V uint16_t; needed only for backward) for the two backward GEMMs; dx and
// dwte are f32 and accumulate, each may be null. Returns the loss sum; waits for stream.
double lm_head_cross_entropy16(DType dtype, float* dx, float* dwte, float* losses,
                               const uint16_t* x, const uint16_t* wte, const int32_t* targets,
                               int64_t N, int64_t C, int64_t V, float grad_scale, float* scratch,
                               uint16_t* scratch16, Stream stream);

// out[B,T,C] (f32) = wte[tokens[b,t]] + wpe[t], tables 16-bit.
void embedding_forward16(DType dtype, float* out, const int32_t* tokens, const uint16_t* wte,
                         const uint16_t* wpe, int B, int T, int C, Stream stream);

// The chunked embedding's forwards with 16-bit tables (f32 out), as cpu_mixed.h's.
void position_embedding_forward16(DType dtype, float* out, const uint16_t* wpe, int B, int T, int C,
                                  Stream stream);
void token_embedding_rows_forward16(DType dtype, float* out, const int32_t* tokens,
                                    const uint16_t* wte_rows, int64_t row_begin, int64_t rows,
                                    int64_t N, int C, Stream stream);

// dst[i] = round(src[i]) and dst[i] = widen(src[i]).
void to_16(DType dtype, const float* src, uint16_t* dst, int64_t n, Stream stream);
void from_16(DType dtype, const uint16_t* src, float* dst, int64_t n, Stream stream);
// dst[i] = round(widen(dst[i]) + src[i]): adds an f32 gradient into a 16-bit one.
void accumulate_16(DType dtype, uint16_t* dst, const float* src, int64_t n, Stream stream);
// Sum of squares (in double) of n 16-bit values, as sum_squares; an inf or NaN in x gives a
// non-finite sum. Waits for stream.
double sum_squares16(DType dtype, const uint16_t* x, int64_t n, Stream stream);

// One AdamW step on the f32 master weights from 16-bit gradients: g = widen(grads16[i]) *
// p.grad_scale + p.l2 * master[i], moments and master updated as adamw_update, then
// params16[i] = round(master[i]).
void adamw_update16(DType dtype, float* master, uint16_t* params16, const uint16_t* grads16,
                    float* m, float* v, int64_t n, const AdamWParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
