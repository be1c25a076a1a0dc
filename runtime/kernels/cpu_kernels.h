// CPU kernels: forward and backward of every op the GPT model uses, llm.c style (raw
// pointers and shapes, no allocation). Templated on the element type: float for training,
// double so gradient checks can run every kernel in double precision.
//
// Conventions:
// - Row-major everywhere. A linear layer's weight is [OC, C] (out = inp @ weight^T + bias).
// - Backward kernels ACCUMULATE (+=) into every gradient they write, parameter and input
//   alike, so micro-batches accumulate and a residual stream's two branches sum. Callers
//   zero gradient buffers when a fresh sum starts.
// - Threaded with OpenMP (one pool, shared with oneDNN's sgemm) and vectorised.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major with leading dimensions.
// op(X) = X, or X^T when trans_x. float goes to oneDNN's sgemm, double to a blocked loop.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias may be null.
template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t C,
                    int64_t OC);
// dinp[N,C] += dout @ weight; dweight[OC,C] += dout^T @ inp; dbias[OC] += column sums of
// dout. Any of dinp, dbias may be null (not wanted).
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int64_t N, int64_t C, int64_t OC);

// Layer normalisation over the last dimension (eps 1e-5, as GPT-2); mean and rstd [N] are
// saved for backward.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int64_t N, int64_t C);
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int64_t N, int64_t C);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n);

// out = a + b, and its backward: da += dout, db += dout.
template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n);
// out[n, c] += bias[c]: a row-parallel linear's bias, added once after the reduction.
template <typename T>
void bias_add(T* out, const T* bias, int64_t N, int64_t C);
template <typename T>
void residual_backward(T* da, T* db, const T* dout, int64_t n);

// Causal multi-head self-attention. qkv [B,T,3C] holds q | k | v, head h at columns
// [h*hs, (h+1)*hs) of each, hs = C / NH. out [B,T,C]; lse [B,NH,T] keeps each query row's
// log-sum-exp of its scaled scores: backward recomputes the probabilities from it, so no
// [T,T] buffer outlives a call (flash-attention style, in blocks of query rows).
template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH);
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int T_, int C, int NH);

// out[B,T,C] = wte[tokens[b,t]] + wpe[t]. Token ids are checked by the data loader.
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                       int C);
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                        int C);

// Rows of scratch the fused head processes at once: logits for that many rows (x V) are
// the only vocabulary-sized buffer.
inline constexpr int64_t kHeadChunkRows = 256;

// The tied output head fused with softmax cross-entropy: logits = x[N,C] @ wte[V,C]^T,
// loss_n = logsumexp(logits_n) - logits_n[targets_n]. Returns the sum of loss_n over rows
// (caller divides). When dx is non-null it also runs backward in the same pass, chunk by
// chunk: dlogits = (softmax - onehot) * grad_scale, dx[N,C] += dlogits @ wte,
// dwte += dlogits^T @ x; the chunk's logits buffer is reused, never the full [N,V].
// scratch holds kHeadChunkRows * V elements. losses[N] (optional) receives loss_n.
template <typename T>
double lm_head_cross_entropy(T* dx, T* dwte, T* losses, const T* x, const T* wte,
                             const int32_t* targets, int64_t N, int64_t C, int64_t V,
                             T grad_scale, T* scratch);

// The word embedding in row chunks (vocab_chunks.cc): the same embedding and head as above,
// split by vocabulary rows so wte [V, C] can be gathered (ZeRO-3) or owned (vocabulary
// parallelism) a chunk at a time. wte_rows / dwte_rows are rows [row_begin, row_begin + rows)
// of wte / dwte. Bit for bit, position_embedding_forward followed by
// token_embedding_rows_forward over chunks covering the vocabulary is embedding_forward, and
// the two backwards over such chunks are embedding_backward (every element sums its
// contributions in the same order, positions increasing).
//
// out[b, t] = wpe[t].
template <typename T>
void position_embedding_forward(T* out, const T* wpe, int B, int T_, int C);
// out[i] += wte_rows[tokens[i] - row_begin] for each i < N whose token is in the chunk; the
// other rows of out are untouched.
template <typename T>
void token_embedding_rows_forward(T* out, const int32_t* tokens, const T* wte_rows,
                                  int64_t row_begin, int64_t rows, int64_t N, int C);
// dwpe[t] += dout[b, t] for b = 0, 1, ..., B - 1, in that order.
template <typename T>
void position_embedding_backward(T* dwpe, const T* dout, int B, int T_, int C);
// dwte_rows[tokens[i] - row_begin] += dout[i] for the i < N (in increasing order) whose token
// is in the chunk.
template <typename T>
void token_embedding_rows_backward(T* dwte_rows, const T* dout, const int32_t* tokens,
                                   int64_t row_begin, int64_t rows, int64_t N, int C);

// Softmax cross-entropy over a vocabulary in column chunks: logits [N, Vc] hold vocabulary
// columns [v_begin, v_begin + Vc). fold() adds a chunk to running per-row statistics: max[N]
// (read only where sum > 0, so zeroed buffers start a fold), sum[N] of exp(logit - max)
// (start at 0, rescaled when max grows) and
// target_logit[N] (written only where targets[n] is in the chunk). finish() turns max into
// lse = max + log(sum) in place, writes losses = lse - target_logit (losses may be null) and
// returns their sum in double. chunk_backward() turns a chunk's logits into their gradient in
// place: (exp(logit - lse) - [v_begin + j == targets[n]]) * grad_scale. Matches
// lm_head_cross_entropy within rounding (the rescaling adds an exp per chunk).
template <typename T>
void cross_entropy_fold(T* max, T* sum, T* target_logit, const T* logits, const int32_t* targets,
                        int64_t N, int64_t Vc, int64_t v_begin);
template <typename T>
double cross_entropy_finish(T* max_to_lse, T* losses, const T* sum, const T* target_logit,
                            int64_t N);
// Vocabulary parallelism merges the ranks' statistics between the folds and the finish:
// mask_empty gives a row no chunk was folded into (sum 0) the lowest max, so an all-reduce
// (max) of max ignores it; rescale then makes sum relative to the global max and takes it
// as its max, before the sums and target logits are all-reduced (summed).
template <typename T>
void cross_entropy_mask_empty(T* max, const T* sum, int64_t N);
template <typename T>
void cross_entropy_rescale(T* max, T* sum, const T* global_max, int64_t N);
template <typename T>
void cross_entropy_chunk_backward(T* logits, const T* lse, const int32_t* targets, int64_t N,
                                  int64_t Vc, int64_t v_begin, T grad_scale);

// Sum of squares (in double) of n gradient values: the piece of a global norm a shard owns.
template <typename T>
double sum_squares(const T* x, int64_t n);
// x *= s.
template <typename T>
void scale(T* x, T s, int64_t n);

struct AdamWParams {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: p -= lr * weight_decay * p
  int64_t step = 1;           // 1-based, for bias correction
  float grad_scale = 1.0f;    // gradients are multiplied by this first (clipping, unscaling)
  float l2 = 0.0f;            // Adam's L2 penalty, unlike weight_decay part of the gradient:
                              // g = grad * grad_scale + l2 * p, before the moments
};
// One AdamW step on n parameters with their gradients and moments m, v.
template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, const AdamWParams& p);

}  // namespace tessera::kernels::cpu
