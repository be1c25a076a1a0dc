// Steps that an fp32 kernel and its 16-bit twin (mixed.cc) share, so the arithmetic exists
// once and both run it the same way: adamw_update16 must match adamw_update<float> bit for
// bit given the widened gradients, the two fused heads must compute the same softmax, and
// the chunked embeddings (vocab_chunks.cc) must pick the same rows.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

// Softmax cross-entropy of `rows` rows of logits[rows, V], in place: returns the sum of the
// rows' losses and writes loss_r to losses[r] when losses is non-null. With backward the
// rows become dlogits = (softmax - onehot(targets[r])) * grad_scale. Threaded over rows.
template <typename T>
double cross_entropy_rows(T* logits, T* losses, const int32_t* targets, int64_t rows, int64_t V,
                          bool backward, T grad_scale);

// The row of the vocabulary chunk [row_begin, row_begin + rows) that holds `token`, or -1
// when the token is in another chunk.
inline int64_t chunk_row(int32_t token, int64_t row_begin, int64_t rows) {
  const int64_t row = int64_t{token} - row_begin;
  return row >= 0 && row < rows ? row : -1;
}

// One AdamW step's constants (bias corrections included), computed once per call, and the
// rule for one parameter (the reference the vector paths of cpu/adam.cc match bit for bit).
template <typename T>
struct AdamWStep {
  explicit AdamWStep(const AdamWParams& p)
      : b1(p.beta1),
        b2(p.beta2),
        lr(p.lr),
        eps(p.eps),
        wd(p.weight_decay),
        gs(p.grad_scale),
        l2(p.l2),
        bias1(T(1) - std::pow(T(p.beta1), T(p.step))),
        bias2(T(1) - std::pow(T(p.beta2), T(p.step))) {}

  // The fused multiply-adds are spelled out, so the rounding does not depend on the compiler
  // contracting expressions or on the flags (the vector paths of cpu/adam.cc do the same
  // operations lane by lane). They are the ones GCC formed from the plain expressions with
  // FMA available, so the losses recorded before (tests/engine/golden) keep every bit.
  void update(T& param, T grad, T& m, T& v) const {
    const T g = std::fma(grad, gs, l2 * param);
    const T mi = std::fma(b1, m, (T(1) - b1) * g);
    const T vi = std::fma(b2, v, (T(1) - b2) * g * g);
    m = mi;
    v = vi;
    const T mhat = mi / bias1;
    const T vhat = vi / bias2;
    const T ratio = mhat / (std::sqrt(vhat) + eps);
    param = std::fma(-lr, std::fma(wd, param, ratio), param);
  }

  T b1, b2, lr, eps, wd, gs, l2, bias1, bias2;
};

}  // namespace tessera::kernels::cpu
