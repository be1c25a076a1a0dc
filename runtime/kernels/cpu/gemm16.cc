// gemm16: bf16 GEMMs on oneDNN's matmul primitive (its AVX512_BF16 brgemm kernels), and the
// widening path (operands to f32, then sgemm) that f16 always takes and bf16 takes where
// oneDNN only offers its reference implementation.
//
// Threads: ranks run as threads of one process and each runs OpenMP, so primitives are
// built once into a mutex-protected cache and executed with a per-thread stream and a
// per-thread scratchpad (scratchpad_mode::user: a primitive's own scratchpad would be shared
// by every thread executing it). The cache key includes the OpenMP team size, which oneDNN
// fixes when it builds the primitive.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <dnnl.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <tuple>
#include <unordered_map>

#include "runtime/core/error.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::kernels::cpu {
namespace {

using dnnl::memory;

// A per-thread buffer that only grows, 64-byte aligned (oneDNN's scratchpad wants that, and
// sgemm reads widened panels faster so).
class GrowBuffer {
 public:
  template <typename T>
  T* get(int64_t count) {
    const size_t bytes = static_cast<size_t>(count) * sizeof(T);
    if (bytes > capacity_) {
      const size_t rounded = (bytes + 63) / 64 * 64;
      data_.reset(static_cast<std::byte*>(std::aligned_alloc(64, rounded)));
      if (data_ == nullptr) TS_THROW(Error, "gemm16: cannot allocate {} bytes of scratch", rounded);
      capacity_ = rounded;
    }
    return reinterpret_cast<T*>(data_.get());
  }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t capacity_ = 0;
};

// ---- widening path ----

// Widened panels hold at most this many floats (16 MiB) each, so the head's [V, C] operand
// is widened a block at a time instead of into a vocabulary-sized copy per thread.
constexpr int64_t kPanelElems = int64_t{1} << 22;
// Depth of a K block: deep enough that sgemm runs at full speed on a panel.
constexpr int64_t kDepthBlock = 4096;

// dst[r, c] = widen(src[(row0 + r) * ld + col0 + c]) for a rows x cols panel, dst dense.
void widen_panel(DType dtype, const uint16_t* src, int64_t ld, int64_t row0, int64_t col0,
                 int64_t rows, int64_t cols, float* dst) {
  const uint16_t* first = src + row0 * ld + col0;
  if (ld == cols) {  // contiguous: one call, threaded by the converter itself
    from_16(dtype, first, dst, rows * cols);
    return;
  }
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) from_16(dtype, first + r * ld, dst + r * cols, cols);
}

// Blocks over K, M and N so each widened panel stays below kPanelElems; C accumulates over
// the K blocks (beta applies on the first only).
void gemm_widened(DType dtype, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                  const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta,
                  float* C, int64_t ldc) {
  thread_local GrowBuffer a_buffer, b_buffer;
  const int64_t bk = std::min(K, kDepthBlock);
  const int64_t bm = std::min(M, std::max<int64_t>(1, kPanelElems / bk));
  const int64_t bn = std::min(N, std::max<int64_t>(1, kPanelElems / bk));
  float* a_panel = a_buffer.get<float>(bm * bk);
  float* b_panel = b_buffer.get<float>(bk * bn);
  for (int64_t k0 = 0; k0 < K; k0 += bk) {
    const int64_t kb = std::min(bk, K - k0);
    const float beta_k = k0 == 0 ? beta : 1.0f;
    std::pair<int64_t, int64_t> b_loaded{-1, -1};  // (k0, n0) of the panel in b_panel
    for (int64_t m0 = 0; m0 < M; m0 += bm) {
      const int64_t mb = std::min(bm, M - m0);
      // Stored A is [M, K] ([K, M] transposed): the panel keeps the stored orientation.
      if (ta) {
        widen_panel(dtype, A, lda, k0, m0, kb, mb, a_panel);
      } else {
        widen_panel(dtype, A, lda, m0, k0, mb, kb, a_panel);
      }
      for (int64_t n0 = 0; n0 < N; n0 += bn) {
        const int64_t nb = std::min(bn, N - n0);
        if (b_loaded != std::pair{k0, n0}) {
          if (tb) {
            widen_panel(dtype, B, ldb, n0, k0, nb, kb, b_panel);
          } else {
            widen_panel(dtype, B, ldb, k0, n0, kb, nb, b_panel);
          }
          b_loaded = {k0, n0};
        }
        gemm<float>(ta, tb, mb, nb, kb, alpha, a_panel, ta ? mb : kb, b_panel, tb ? kb : nb, beta_k,
                    C + m0 * ldc + n0, ldc);
      }
    }
  }
}

// ---- oneDNN matmul path ----

struct Key {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  uint32_t alpha, beta;  // bit patterns: -0.0 and NaN are keys like any other
  int threads;
  auto operator<=>(const Key&) const = default;
};

// A built primitive, or none when this shape is better widened.
struct Plan {
  std::optional<dnnl::matmul> primitive;
  memory::desc a, b, c, scratchpad;
};

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Row-major [rows, cols] with leading dimension ld, or its transpose viewed through strides.
memory::desc strided_desc(int64_t rows, int64_t cols, int64_t ld, bool stored_transposed,
                          memory::data_type type) {
  const memory::dims strides = stored_transposed ? memory::dims{1, ld} : memory::dims{ld, 1};
  return memory::desc({rows, cols}, type, strides);
}

std::unique_ptr<Plan> make_plan(const Key& k) {
  auto plan = std::make_unique<Plan>();
  plan->a = strided_desc(k.M, k.K, k.lda, k.ta, memory::data_type::bf16);
  plan->b = strided_desc(k.K, k.N, k.ldb, k.tb, memory::data_type::bf16);
  plan->c = strided_desc(k.M, k.N, k.ldc, false, memory::data_type::f32);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const float alpha = std::bit_cast<float>(k.alpha), beta = std::bit_cast<float>(k.beta);
  // oneDNN: dst = output_scale * (A @ B) + sum_scale * dst, the BLAS rule.
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(plan->a, plan->b, plan->c), attr,
                                          cpu_engine());
    // The reference implementation is scalar loops, far slower than widening to sgemm.
    if (std::string_view(pd.impl_info_str()).starts_with("ref")) return plan;
    plan->scratchpad = pd.scratchpad_desc();
    plan->primitive.emplace(pd);
  } catch (const dnnl::error&) {
    // No implementation for this CPU or these strides: widen.
  }
  return plan;
}

const Plan& plan_for(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  const std::lock_guard lock(mutex);
  std::unique_ptr<Plan>& plan = plans[key];
  if (plan == nullptr) plan = make_plan(key);
  return *plan;
}

void run_plan(const Plan& plan, const uint16_t* A, const uint16_t* B, float* C) {
  thread_local dnnl::stream stream(cpu_engine());
  thread_local GrowBuffer scratchpad;
  const dnnl::engine& engine = cpu_engine();
  // oneDNN takes non-const handles; it only reads src and weights.
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(plan.a, engine, const_cast<uint16_t*>(A))},
      {DNNL_ARG_WEIGHTS, memory(plan.b, engine, const_cast<uint16_t*>(B))},
      {DNNL_ARG_DST, memory(plan.c, engine, C)},
  };
  const size_t scratch_bytes = plan.scratchpad.get_size();
  if (scratch_bytes > 0) {
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(plan.scratchpad, engine,
                        scratchpad.get<std::byte>(static_cast<int64_t>(scratch_bytes))));
  }
  plan.primitive->execute(stream, args);
  stream.wait();
}

}  // namespace

void gemm16(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  TS_CHECK(dtype == DType::BF16 || dtype == DType::F16, "gemm16: dtype must be bf16 or f16, got {}",
           dtype_name(dtype));
  TS_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm16: negative size M={} N={} K={}", M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C, as gemm<float> defines it (A and B are not read)
    gemm<float>(trans_a, trans_b, M, N, 0, alpha, nullptr, 1, nullptr, 1, beta, C, ldc);
    return;
  }
  TS_CHECK(lda >= std::max<int64_t>(1, trans_a ? M : K) &&
               ldb >= std::max<int64_t>(1, trans_b ? K : N) && ldc >= std::max<int64_t>(1, N),
           "gemm16: leading dimension too small (M={} N={} K={} lda={} ldb={} ldc={})", M, N, K,
           lda, ldb, ldc);
  if (dtype == DType::BF16) {
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    const uint32_t alpha_bits = std::bit_cast<uint32_t>(alpha);
    const uint32_t beta_bits = std::bit_cast<uint32_t>(beta);
    const Key key{trans_a, trans_b, M, N, K, lda, ldb, ldc, alpha_bits, beta_bits, threads};
    const Plan& plan = plan_for(key);
    if (plan.primitive) {
      try {
        run_plan(plan, A, B, C);
      } catch (const dnnl::error& e) {
        TS_THROW(Error, "gemm16: oneDNN bf16 matmul failed ({}) for M={} N={} K={}", e.what(), M, N,
                 K);
      }
      return;
    }
  }
  gemm_widened(dtype, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace tessera::kernels::cpu
