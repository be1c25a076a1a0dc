// Causal multi-head self-attention, flash-attention style on the CPU.
//
// Each (batch, head) pair is one task; a task walks blocks of kQueryBlock query rows. For a
// block it forms the scores against the keys it may see (a [rows, keys] tile in per-thread
// scratch), turns them into probabilities and multiplies by V. Forward keeps only the
// log-sum-exp of each row; backward rebuilds the same tiles from it. The tile products are
// small gemm calls (oneDNN runs them single-threaded inside our parallel region), so the
// arithmetic runs at BLAS speed while memory stays O(T * block) per thread.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/kernels/cpu/vec_math.h"
#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {
namespace {
constexpr int kQueryBlock = 64;
}

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int64_t ld_qkv = 3 * int64_t{C};
#pragma omp parallel
  {
    std::vector<T> scores(static_cast<size_t>(kQueryBlock) * T_);
#pragma omp for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const T* q = qkv + int64_t{b} * T_ * ld_qkv + int64_t{h} * hs;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* o = out + int64_t{b} * T_ * C + int64_t{h} * hs;
      T* row_lse = lse + int64_t{bh} * T_;
      for (int q0 = 0; q0 < T_; q0 += kQueryBlock) {
        const int rows = std::min(kQueryBlock, T_ - q0);
        const int keys = q0 + rows;  // causal: no query in this block sees past key q0+rows-1
        gemm<T>(false, true, rows, keys, hs, scale, q + q0 * ld_qkv, ld_qkv, k, ld_qkv, T(0),
                scores.data(), keys);
        for (int r = 0; r < rows; ++r) {
          T* s = scores.data() + int64_t{r} * keys;
          const int visible = q0 + r + 1;
          T mx = -std::numeric_limits<T>::infinity();
          for (int j = 0; j < visible; ++j) mx = std::max(mx, s[j]);
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int j = 0; j < visible; ++j) {
            s[j] = k_exp(s[j] - mx);
            sum += s[j];
          }
          const T inv = T(1) / sum;
#pragma omp simd
          for (int j = 0; j < visible; ++j) s[j] *= inv;
          std::fill(s + visible, s + keys, T(0));
          row_lse[q0 + r] = mx + std::log(sum);
        }
        gemm<T>(false, false, rows, hs, keys, T(1), scores.data(), keys, v, ld_qkv, T(0),
                o + int64_t{q0} * C, C);
      }
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int64_t ld_qkv = 3 * int64_t{C};
#pragma omp parallel
  {
    std::vector<T> probs(static_cast<size_t>(kQueryBlock) * T_);
    std::vector<T> dprobs(static_cast<size_t>(kQueryBlock) * T_);
    std::vector<T> row_dot(T_);
#pragma omp for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const int64_t qkv_base = int64_t{b} * T_ * ld_qkv + int64_t{h} * hs;
      const T* q = qkv + qkv_base;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* dq = dqkv + qkv_base;
      T* dk = dq + C;
      T* dv = dq + 2 * C;
      const int64_t out_base = int64_t{b} * T_ * C + int64_t{h} * hs;
      const T* o = out + out_base;
      const T* dout_h = dout + out_base;
      const T* row_lse = lse + int64_t{bh} * T_;
      // D_t = dO_t . O_t: the softmax backward's per-row correction term.
      for (int t = 0; t < T_; ++t) {
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int d = 0; d < hs; ++d) acc += dout_h[int64_t{t} * C + d] * o[int64_t{t} * C + d];
        row_dot[t] = acc;
      }
      for (int q0 = 0; q0 < T_; q0 += kQueryBlock) {
        const int rows = std::min(kQueryBlock, T_ - q0);
        const int keys = q0 + rows;
        T* p = probs.data();
        T* dp = dprobs.data();
        gemm<T>(false, true, rows, keys, hs, scale, q + q0 * ld_qkv, ld_qkv, k, ld_qkv, T(0), p,
                keys);
        for (int r = 0; r < rows; ++r) {
          T* s = p + int64_t{r} * keys;
          const int visible = q0 + r + 1;
          const T l = row_lse[q0 + r];
#pragma omp simd
          for (int j = 0; j < visible; ++j) s[j] = k_exp(s[j] - l);
          std::fill(s + visible, s + keys, T(0));
        }
        // dV += P^T dO
        gemm<T>(true, false, keys, hs, rows, T(1), p, keys, dout_h + int64_t{q0} * C, C, T(1), dv,
                ld_qkv);
        // dP = dO V^T, then dS = P * (dP - D) in place
        gemm<T>(false, true, rows, keys, hs, T(1), dout_h + int64_t{q0} * C, C, v, ld_qkv, T(0),
                dp, keys);
        for (int r = 0; r < rows; ++r) {
          T* ds = dp + int64_t{r} * keys;
          const T* pr = p + int64_t{r} * keys;
          const T dr = row_dot[q0 + r];
#pragma omp simd
          for (int j = 0; j < keys; ++j) ds[j] = pr[j] * (ds[j] - dr);
        }
        // dQ += scale dS K ; dK += scale dS^T Q
        gemm<T>(false, false, rows, hs, keys, scale, dp, keys, k, ld_qkv, T(1),
                dq + q0 * ld_qkv, ld_qkv);
        gemm<T>(true, false, keys, hs, rows, scale, dp, keys, q + q0 * ld_qkv, ld_qkv, T(1), dk,
                ld_qkv);
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         const double*, int, int, int, int);

}  // namespace tessera::kernels::cpu
