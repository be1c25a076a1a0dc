// The word embedding and the tied head in vocabulary row chunks (cpu_kernels.h): the pieces of
// embedding.cc and lm_head.cc that let wte be gathered, or owned, one chunk of rows at a time.
// The embedding pieces repeat embedding.cc's arithmetic exactly (one add per contribution, in
// the same order per element), so chunked and fused results agree bit for bit; the
// cross-entropy keeps running softmax statistics across chunks (online softmax), which agrees
// with the fused head within rounding.
#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/kernels/cpu/shared_steps.h"
#include "runtime/kernels/cpu/vec_math.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {
namespace {

// Channels per thread in the backward passes, as embedding_backward.
constexpr int kChannelBlock = 64;

int channel_blocks(int C) { return (C + kChannelBlock - 1) / kChannelBlock; }

}  // namespace

template <typename T>
void position_embedding_forward(T* out, const T* wpe, int B, int T_, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < int64_t{B} * T_; ++bt) {
    const T* pos = wpe + (bt % T_) * C;
    std::copy(pos, pos + C, out + bt * C);
  }
}

template <typename T>
void token_embedding_rows_forward(T* out, const int32_t* tokens, const T* wte_rows,
                                  int64_t row_begin, int64_t rows, int64_t N, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = chunk_row(tokens[i], row_begin, rows);
    if (row < 0) continue;
    const T* tok = wte_rows + row * C;
    T* o = out + i * C;
    // o holds wpe[t]: one add, as embedding_forward's wte[tok] + wpe[t] (addition commutes).
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] += tok[c];
  }
}

template <typename T>
void position_embedding_backward(T* dwpe, const T* dout, int B, int T_, int C) {
  // Each (position, channel block) has one owner, which adds the batch in order b = 0, 1, ...:
  // embedding_backward's order for that element, so the same bits.
  const int blocks = channel_blocks(C);
#pragma omp parallel for collapse(2) schedule(static)
  for (int t = 0; t < T_; ++t) {
    for (int blk = 0; blk < blocks; ++blk) {
      const int c0 = blk * kChannelBlock;
      const int c1 = std::min(C, c0 + kChannelBlock);
      T* pos = dwpe + int64_t{t} * C;
      for (int b = 0; b < B; ++b) {
        const T* d = dout + (int64_t{b} * T_ + t) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) pos[c] += d[c];
      }
    }
  }
}

template <typename T>
void token_embedding_rows_backward(T* dwte_rows, const T* dout, const int32_t* tokens,
                                   int64_t row_begin, int64_t rows, int64_t N, int C) {
  // A token may repeat, so threads split the channels, as embedding_backward: every element
  // adds its positions in increasing order.
  const int blocks = channel_blocks(C);
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = std::min(C, c0 + kChannelBlock);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t row = chunk_row(tokens[i], row_begin, rows);
      if (row < 0) continue;
      const T* d = dout + i * C;
      T* tok = dwte_rows + row * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) tok[c] += d[c];
    }
  }
}

template <typename T>
void cross_entropy_fold(T* max, T* sum, T* target_logit, const T* logits, const int32_t* targets,
                        int64_t N, int64_t Vc, int64_t v_begin) {
  if (Vc <= 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits + n * Vc;
    // sum 0: nothing folded yet, whatever max holds (buffers start zeroed).
    const bool empty = sum[n] == T(0);
    const T old_max = empty ? -std::numeric_limits<T>::infinity() : max[n];
    T mx = old_max;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < Vc; ++j) mx = std::max(mx, l[j]);
    T chunk_sum = 0;
#pragma omp simd reduction(+ : chunk_sum)
    for (int64_t j = 0; j < Vc; ++j) chunk_sum += k_exp(l[j] - mx);
    // The running sum is relative to the old maximum. Exactly 1 when it did not grow (the
    // common case once the largest logit has been seen); nothing folded yet adds 0, which
    // k_exp's clamped range would not give exactly.
    const T rescale = empty ? T(0) : old_max == mx ? T(1) : k_exp(old_max - mx);
    sum[n] = sum[n] * rescale + chunk_sum;
    max[n] = mx;
    const int64_t j = chunk_row(targets[n], v_begin, Vc);
    if (j >= 0) target_logit[n] = l[j];
  }
}

template <typename T>
double cross_entropy_finish(T* max_to_lse, T* losses, const T* sum, const T* target_logit,
                            int64_t N) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T lse = std::log(sum[n]) + max_to_lse[n];  // the fused head's association
    max_to_lse[n] = lse;
    if (losses != nullptr) losses[n] = lse - target_logit[n];
  }
  // Summed in row order, not by an OpenMP reduction (which adds the threads' partials in
  // arrival order): the same bits on every run, at any thread count.
  double loss_sum = 0.0;
  for (int64_t n = 0; n < N; ++n) loss_sum += static_cast<double>(max_to_lse[n] - target_logit[n]);
  return loss_sum;
}

template <typename T>
void cross_entropy_chunk_backward(T* logits, const T* lse, const int32_t* targets, int64_t N,
                                  int64_t Vc, int64_t v_begin, T grad_scale) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* l = logits + n * Vc;
    const T m = lse[n];
    const int64_t target = chunk_row(targets[n], v_begin, Vc);  // -1: not in this chunk
#pragma omp simd
    for (int64_t j = 0; j < Vc; ++j) {
      l[j] = (k_exp(l[j] - m) - (j == target ? T(1) : T(0))) * grad_scale;
    }
  }
}

template <typename T>
void cross_entropy_mask_empty(T* max, const T* sum, int64_t N) {
  for (int64_t n = 0; n < N; ++n) {
    if (sum[n] == T(0)) max[n] = std::numeric_limits<T>::lowest();
  }
}

template <typename T>
void cross_entropy_rescale(T* max, T* sum, const T* global_max, int64_t N) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    // Exactly 1 on the rank holding the row's largest logit, 0 where nothing was folded.
    if (sum[n] != T(0) && max[n] != global_max[n]) sum[n] *= std::exp(max[n] - global_max[n]);
    max[n] = global_max[n];
  }
}

#define TS_VOCAB_CHUNKS_INSTANTIATE(T)                                                           \
  template void position_embedding_forward<T>(T*, const T*, int, int, int);                      \
  template void token_embedding_rows_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t,  \
                                                int64_t, int);                                   \
  template void position_embedding_backward<T>(T*, const T*, int, int, int);                     \
  template void token_embedding_rows_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, \
                                                 int64_t, int);                                  \
  template void cross_entropy_fold<T>(T*, T*, T*, const T*, const int32_t*, int64_t, int64_t,    \
                                      int64_t);                                                  \
  template double cross_entropy_finish<T>(T*, T*, const T*, const T*, int64_t);                  \
  template void cross_entropy_mask_empty<T>(T*, const T*, int64_t);                              \
  template void cross_entropy_rescale<T>(T*, T*, const T*, int64_t);                             \
  template void cross_entropy_chunk_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t,  \
                                                int64_t, T);
TS_VOCAB_CHUNKS_INSTANTIATE(float)
TS_VOCAB_CHUNKS_INSTANTIATE(double)
#undef TS_VOCAB_CHUNKS_INSTANTIATE

}  // namespace tessera::kernels::cpu
