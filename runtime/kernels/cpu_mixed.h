// CPU kernels for mixed-precision training: 16-bit (bf16 or f16) parameters, gradients and
// GEMM operands, fp32 accumulation everywhere. The model keeps LayerNorm, GELU, softmax and
// the residual stream in fp32 (the ops PyTorch autocast also keeps in fp32) and stores the
// activations that only feed GEMMs in 16 bits; these kernels are the 16-bit side of that.
//
// Conventions are those of cpu_kernels.h (row-major, [OC, C] weights, backward kernels
// accumulate). A 16-bit buffer is uint16_t holding bf16 or f16 bits; `dtype` (DType::BF16 or
// DType::F16, anything else throws InvalidArgument) says which. Rounding is
// round-to-nearest-even, as runtime/core/half.h.
//
// Speed: bf16 GEMMs run on oneDNN's AVX512_BF16 kernels where the CPU has them (about twice
// the fp32 FLOP rate on Zen 4/5); f16 has no fast CPU GEMM without AVX512_FP16, so its
// operands are widened to f32 and go through sgemm: fp16 saves memory on a CPU, not time.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

// C[M,N] (f32) = alpha * op(A) @ op(B) + beta * C, A and B 16-bit of `dtype`, row-major with
// leading dimensions, as gemm<float> (beta = 0: C is not read; K = 0: C = beta * C). Safe to
// call from several threads at once (thread ranks share one process). bf16 runs oneDNN's
// matmul, built once per shape and cached; f16, and bf16 where oneDNN has only its reference
// code, widen op(A) and op(B) a panel at a time (at most 16 MiB of f32 each, per thread) and
// call sgemm.
void gemm16(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C,
            int64_t ldc);

// out[N,OC] (f32) = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias (f32) may be null.
void matmul_forward16(DType dtype, float* out, const uint16_t* inp, const uint16_t* weight,
                      const float* bias, int64_t N, int64_t C, int64_t OC);
// dinp[N,C] += dout16 @ weight; dweight[OC,C] += dout16^T @ inp (both f32); dbias[OC] +=
// column sums of dout (the f32 gradient dout16 was rounded from). dinp, dbias may be null.
void matmul_backward16(DType dtype, float* dinp, float* dweight, float* dbias,
                       const uint16_t* dout16, const float* dout, const uint16_t* inp,
                       const uint16_t* weight, int64_t N, int64_t C, int64_t OC);

// lm_head_cross_entropy with 16-bit x[N,C] and wte[V,C]: logits in f32 per chunk, softmax and
// loss in f32, dlogits rounded to 16 bits for the two backward GEMMs; dx[N,C] and dwte[V,C]
// are f32 and accumulate. scratch: kHeadChunkRows * V floats; scratch16: as many uint16_t
// (unused, may be null, when dx is null: forward only).
double lm_head_cross_entropy16(DType dtype, float* dx, float* dwte, float* losses,
                               const uint16_t* x, const uint16_t* wte, const int32_t* targets,
                               int64_t N, int64_t C, int64_t V, float grad_scale, float* scratch,
                               uint16_t* scratch16);

// out[B,T,C] (f32) = wte[tokens[b,t]] + wpe[t], tables 16-bit.
void embedding_forward16(DType dtype, float* out, const int32_t* tokens, const uint16_t* wte,
                         const uint16_t* wpe, int B, int T_, int C);
// The chunked embedding's forwards (cpu_kernels.h) with 16-bit tables: out[b, t] (f32) =
// wpe[t] widened; out[i] += wte_rows[tokens[i] - row_begin] widened, for the i < N whose token
// is in [row_begin, row_begin + rows). Together, bit for bit embedding_forward16.
void position_embedding_forward16(DType dtype, float* out, const uint16_t* wpe, int B, int T_,
                                  int C);
void token_embedding_rows_forward16(DType dtype, float* out, const int32_t* tokens,
                                    const uint16_t* wte_rows, int64_t row_begin, int64_t rows,
                                    int64_t N, int C);

// dst[i] = round(src[i]) and dst[i] = widen(src[i]), dispatched on dtype to cpu_convert.h.
void to_16(DType dtype, const float* src, uint16_t* dst, int64_t n);
void from_16(DType dtype, const uint16_t* src, float* dst, int64_t n);
// dst[i] = round(widen(dst[i]) + src[i]): adds an fp32 gradient into a 16-bit one.
void accumulate_16(DType dtype, uint16_t* dst, const float* src, int64_t n);
// Sum of squares (in double) of n 16-bit values; inf or nan in x gives a non-finite sum.
double sum_squares16(DType dtype, const uint16_t* x, int64_t n);

// One AdamW step on the fp32 master weights from 16-bit gradients: g = widen(grads16[i]) *
// p.grad_scale + p.l2 * master[i], the moments and master update exactly as adamw_update,
// then params16[i] = round(master[i]).
void adamw_update16(DType dtype, float* master, uint16_t* params16, const uint16_t* grads16,
                    float* m, float* v, int64_t n, const AdamWParams& p);

}  // namespace tessera::kernels::cpu
