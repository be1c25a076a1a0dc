// The mixed-precision kernels of cpu_mixed.h other than gemm16 (gemm16.cc): layers on 16-bit
// operands with f32 results, and the element-wise kernels that move between the f32 and the
// 16-bit copies. Element-wise work goes in blocks of kBlock elements: each block is widened
// (or rounded) by cpu_convert.h's vector converters into an f32 block on the stack, so the
// arithmetic runs on f32 vectors and the rounding is the one the converters define.
#include <algorithm>
#include <cmath>

#include "runtime/core/error.h"
#include "runtime/kernels/cpu/shared_steps.h"
#include "runtime/kernels/cpu_adam.h"
#include "runtime/kernels/cpu_convert.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::kernels::cpu {
namespace {

// 16 KiB of f32 per block: two fit in L1 with their 16-bit sources.
constexpr int64_t kBlock = 4096;
// Below this one core is faster than waking the pool.
constexpr int64_t kParallelMin = int64_t{1} << 16;

void check_dtype(DType dtype, const char* op) {
  TS_CHECK(dtype == DType::BF16 || dtype == DType::F16, "{}: dtype must be bf16 or f16, got {}", op,
           dtype_name(dtype));
}

int64_t block_count(int64_t n) { return (n + kBlock - 1) / kBlock; }

// o[0, n) += the 16-bit row src widened, one add per element (the embeddings' single add).
void add_widened(DType dtype, float* o, const uint16_t* src, int64_t n) {
  float block[kBlock];
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const int64_t len = std::min<int64_t>(kBlock, n - c0);
    from_16(dtype, src + c0, block, len);
#pragma omp simd
    for (int64_t c = 0; c < len; ++c) o[c0 + c] += block[c];
  }
}

// f(i0, len) for each block [i0, i0 + len) of [0, n), blocks split across the pool.
template <typename F>
void for_each_block(int64_t n, const F& f) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < block_count(n); ++b) f(b * kBlock, std::min(kBlock, n - b * kBlock));
}

}  // namespace

void to_16(DType dtype, const float* src, uint16_t* dst, int64_t n) {
  check_dtype(dtype, "to_16");
  const auto convert = dtype == DType::BF16 ? f32_to_bf16 : f32_to_f16;
  convert(src, dst, n, best_convert_path());
}

void from_16(DType dtype, const uint16_t* src, float* dst, int64_t n) {
  check_dtype(dtype, "from_16");
  const auto convert = dtype == DType::BF16 ? bf16_to_f32 : f16_to_f32;
  convert(src, dst, n, best_convert_path());
}

void matmul_forward16(DType dtype, float* out, const uint16_t* inp, const uint16_t* weight,
                      const float* bias, int64_t N, int64_t C, int64_t OC) {
  if (bias != nullptr) {
    // Start from the bias and let the GEMM accumulate: one pass over `out` instead of two.
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) std::copy(bias, bias + OC, out + n * OC);
  }
  gemm16(dtype, false, true, N, OC, C, 1.0f, inp, C, weight, C, bias != nullptr ? 1.0f : 0.0f, out,
         OC);
}

void matmul_backward16(DType dtype, float* dinp, float* dweight, float* dbias,
                       const uint16_t* dout16, const float* dout, const uint16_t* inp,
                       const uint16_t* weight, int64_t N, int64_t C, int64_t OC) {
  if (dinp != nullptr) {
    gemm16(dtype, false, false, N, C, OC, 1.0f, dout16, OC, weight, C, 1.0f, dinp, C);
  }
  if (dweight != nullptr) {
    gemm16(dtype, true, false, OC, C, N, 1.0f, dout16, OC, inp, C, 1.0f, dweight, C);
  }
  // The f32 kernel's column sums, alone (no dinp, no dweight): from the unrounded dout.
  if (dbias != nullptr) {
    matmul_backward<float>(nullptr, nullptr, dbias, dout, nullptr, nullptr, N, C, OC);
  }
}

double lm_head_cross_entropy16(DType dtype, float* dx, float* dwte, float* losses,
                               const uint16_t* x, const uint16_t* wte, const int32_t* targets,
                               int64_t N, int64_t C, int64_t V, float grad_scale, float* scratch,
                               uint16_t* scratch16) {
  check_dtype(dtype, "lm_head_cross_entropy16");
  double loss_sum = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += kHeadChunkRows) {
    const int64_t rows = std::min(kHeadChunkRows, N - r0);
    float* logits = scratch;
    gemm16(dtype, false, true, rows, V, C, 1.0f, x + r0 * C, C, wte, C, 0.0f, logits, V);
    loss_sum += cross_entropy_rows<float>(logits, losses != nullptr ? losses + r0 : nullptr,
                                          targets + r0, rows, V, dx != nullptr, grad_scale);
    if (dx != nullptr) {
      uint16_t* dlogits16 = scratch16;
      to_16(dtype, logits, dlogits16, rows * V);
      gemm16(dtype, false, false, rows, C, V, 1.0f, dlogits16, V, wte, C, 1.0f, dx + r0 * C, C);
      gemm16(dtype, true, false, V, C, rows, 1.0f, dlogits16, V, x + r0 * C, C, 1.0f, dwte, C);
    }
  }
  return loss_sum;
}

void embedding_forward16(DType dtype, float* out, const int32_t* tokens, const uint16_t* wte,
                         const uint16_t* wpe, int B, int T_, int C) {
  check_dtype(dtype, "embedding_forward16");
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < int64_t{B} * T_; ++bt) {
    float* o = out + bt * C;
    from_16(dtype, wte + int64_t{tokens[bt]} * C, o, C);
    add_widened(dtype, o, wpe + (bt % T_) * C, C);
  }
}

void position_embedding_forward16(DType dtype, float* out, const uint16_t* wpe, int B, int T_,
                                  int C) {
  check_dtype(dtype, "position_embedding_forward16");
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < int64_t{B} * T_; ++bt) {
    from_16(dtype, wpe + (bt % T_) * C, out + bt * C, C);
  }
}

void token_embedding_rows_forward16(DType dtype, float* out, const int32_t* tokens,
                                    const uint16_t* wte_rows, int64_t row_begin, int64_t rows,
                                    int64_t N, int C) {
  check_dtype(dtype, "token_embedding_rows_forward16");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = chunk_row(tokens[i], row_begin, rows);
    if (row < 0) continue;
    // out holds widen(wpe[t]): one add of the widened row, as embedding_forward16.
    add_widened(dtype, out + i * C, wte_rows + row * C, C);
  }
}

void accumulate_16(DType dtype, uint16_t* dst, const float* src, int64_t n) {
  check_dtype(dtype, "accumulate_16");
  for_each_block(n, [&](int64_t i0, int64_t len) {
    float block[kBlock];
    from_16(dtype, dst + i0, block, len);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) block[i] += src[i0 + i];
    to_16(dtype, block, dst + i0, len);
  });
}

double sum_squares16(DType dtype, const uint16_t* x, int64_t n) {
  check_dtype(dtype, "sum_squares16");
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (n >= kParallelMin)
  for (int64_t b = 0; b < block_count(n); ++b) {
    const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
    float block[kBlock];
    from_16(dtype, x + i0, block, len);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < len; ++i) acc += static_cast<double>(block[i]) * block[i];
    total += acc;
  }
  return total;
}

void adamw_update16(DType dtype, float* master, uint16_t* params16, const uint16_t* grads16,
                    float* m, float* v, int64_t n, const AdamWParams& p) {
  check_dtype(dtype, "adamw_update16");
  if (dtype == DType::BF16) {
    adamw_bf16(master, params16, grads16, m, v, n, p);  // one pass, the same bits
    return;
  }
  for_each_block(n, [&](int64_t i0, int64_t len) {
    float grad[kBlock];
    from_16(dtype, grads16 + i0, grad, len);
    adamw_f32(master + i0, grad, m + i0, v + i0, len, p);
    to_16(dtype, master + i0, params16 + i0, len);
  });
}

}  // namespace tessera::kernels::cpu
