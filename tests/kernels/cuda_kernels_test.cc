// Every CUDA kernel against its CPU counterpart (cpu_kernels.h) on random inputs, forward and
// backward, at a small odd shape and a larger one. Backward gradients start non-zero on both
// sides, so the accumulate (+=) contract is checked too.
//
// Tolerance: |gpu - cpu| <= atol + rtol * |cpu|. Element-wise ops use rtol = atol = 1e-5,
// GELU 1e-4 (the CPU's tanh is exp-based with ~1e-7 absolute error, which the derivative's
// 1 - tanh^2 amplifies by up to ~50 at |x| ~ 9); ops that sum (GEMMs, layernorm
// row statistics, softmax, attention) use rtol = atol = 1e-3 on values of order 1, since
// cuBLAS and our kernels sum in a different order than the CPU.
//
// The mixed-precision (*16) kernels run for bf16 and f16 against cpu_mixed.h on the same
// 16-bit inputs, with the same tolerances: 16-bit products are exact in f32, so a GEMM of
// 16-bit operands differs between backends only in summation order. Conversions are checked
// bit for bit against runtime/core/half.h (NaN compared as NaN: the payload may differ), and
// values that went through a rounding both backends do separately (the optimizer's params16
// after slightly different f32 masters) within one 16-bit ulp.
//
// Without a device (no GPU, no driver, or a CPU-only build) every test skips, except the one
// that checks the CPU-only build's stub throws NotCompiled.
#include "runtime/kernels/cuda_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/core/rng.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/cpu_mixed.h"
#include "runtime/kernels/ops.h"
#include "tessera/config.h"

namespace {

namespace cu = tessera::kernels::cuda;
namespace cpu = tessera::kernels::cpu;
using tessera::DType;

constexpr double kSumTol = 1e-3;
constexpr double kElementTol = 1e-5;
constexpr double kGeluTol = 1e-4;

std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = shift + scale * static_cast<float>(tessera::normal_at(seed, 0, i));
  }
  return v;
}

std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  tessera::Rng rng(seed);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return v;
}

// Device memory through Storage, so the tests also exercise the registered CUDA allocator.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(const std::vector<T>& host)
      : size_(host.size()),
        storage_(std::max<size_t>(1, host.size()) * sizeof(T), tessera::MemCategory::Other,
                 tessera::Device::cuda(0)) {
    cu::copy_to_device(storage_.data(), host.data(), size_ * sizeof(T));
  }
  T* get() { return static_cast<T*>(storage_.data()); }
  // Through the legacy default stream, which waits for the blocking streams the ops ran on.
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    cu::copy_to_host(host.data(), storage_.data(), size_ * sizeof(T));
    return host;
  }

 private:
  size_t size_;
  tessera::Storage storage_;
};

// Expects same(got[i], want[i]) for every i; reports how many differ and the first (integers
// in hex: they are bit patterns).
template <typename T, typename Same>
void expect_all(const std::vector<T>& got, const std::vector<T>& want, Same same,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  size_t first_bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!same(got[i], want[i]) && bad++ == 0) first_bad = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " values differ; first at "
                     << first_bad << ": gpu " << std::hex << got[first_bad] << ", cpu "
                     << want[first_bad];
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  expect_all(
      got, want,
      [tol](float g, float w) {
        const double err = std::abs(static_cast<double>(g) - w);
        return err <= tol + tol * std::abs(static_cast<double>(w));  // NaN fails too
      },
      what);
}

// ---- 16-bit values ----------------------------------------------------------------------------

constexpr DType kDtypes16[] = {DType::BF16, DType::F16};
// The GEMM-based ops run in f32 (the f32 kernels) and in each 16-bit dtype (the *16 kernels).
constexpr DType kGemmDtypes[] = {DType::F32, DType::BF16, DType::F16};

// Host rounding and widening through runtime/core/half.h, the reference for both backends.
uint16_t round16(DType dtype, float x) {
  return dtype == DType::BF16 ? tessera::f32_to_bf16(x) : tessera::f32_to_f16(x);
}
float widen16(DType dtype, uint16_t h) {
  return dtype == DType::BF16 ? tessera::bf16_to_f32(h) : tessera::f16_to_f32(h);
}
std::vector<uint16_t> round16(DType dtype, const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = round16(dtype, v[i]);
  return out;
}
std::vector<float> widen16(DType dtype, const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = widen16(dtype, v[i]);
  return out;
}
bool is_nan16(DType dtype, uint16_t h) {
  return (h & 0x7fffu) > (dtype == DType::BF16 ? 0x7f80u : 0x7c00u);
}
// The spacing of 16-bit values relative to their magnitude, at most: 2^-7 (bf16), 2^-10 (f16).
double ulp16(DType dtype) { return dtype == DType::BF16 ? 0x1p-7 : 0x1p-10; }

std::string dtype_tag(DType dtype) { return " " + std::string(tessera::dtype_name(dtype)); }

// A GEMM operand in the precision under test: f32() holds the values as given; for a 16-bit
// dtype b16() holds them rounded to it (what the *16 kernels read). Uploaded on construction.
class GemmInput {
 public:
  GemmInput(DType dtype, std::vector<float> values)
      : f32_(std::move(values)),
        b16_(dtype == DType::F32 ? std::vector<uint16_t>{} : round16(dtype, f32_)),
        d_f32_(f32_),
        d_b16_(b16_) {}
  const float* f32() const { return f32_.data(); }
  const uint16_t* b16() const { return b16_.data(); }
  float* d_f32() { return d_f32_.get(); }
  uint16_t* d_b16() { return d_b16_.get(); }

 private:
  std::vector<float> f32_;
  std::vector<uint16_t> b16_;
  DeviceArray<float> d_f32_;
  DeviceArray<uint16_t> d_b16_;
};

// Bit-exact equality, except that any NaN matches any NaN.
void expect_same_bits16(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                        DType dtype, const std::string& what) {
  expect_all(
      got, want,
      [dtype](uint16_t g, uint16_t w) {
        return g == w || (is_nan16(dtype, g) && is_nan16(dtype, w));
      },
      what);
}
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  expect_all(
      got, want,
      [](float g, float w) {
        return std::bit_cast<uint32_t>(g) == std::bit_cast<uint32_t>(w) ||
               (std::isnan(g) && std::isnan(w));
      },
      what);
}

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cu::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    cu::set_device(0);
  }
};

TEST_F(CudaKernelsTest, GemmMatchesCpuForAllTransposes) {
  struct Shape {
    int64_t M, N, K;
  };
  for (const DType dtype : kGemmDtypes) {
    for (const Shape s : {Shape{5, 7, 3}, Shape{33, 17, 65}}) {
      for (const bool ta : {false, true}) {
        for (const bool tb : {false, true}) {
          // Leading dimensions one wider than needed, to check they are honoured.
          const int64_t lda = (ta ? s.M : s.K) + 1;
          const int64_t ldb = (tb ? s.K : s.N) + 1;
          const int64_t ldc = s.N + 1;
          GemmInput A(dtype, random_floats((ta ? s.K : s.M) * lda, 1));
          GemmInput B(dtype, random_floats((tb ? s.N : s.K) * ldb, 2));
          auto C = random_floats(s.M * ldc, 3);
          DeviceArray<float> dC(C);
          if (dtype == DType::F32) {
            cu::gemm(ta, tb, s.M, s.N, s.K, 0.7f, A.d_f32(), lda, B.d_f32(), ldb, 0.3f, dC.get(),
                     ldc, nullptr);
            cpu::gemm<float>(ta, tb, s.M, s.N, s.K, 0.7f, A.f32(), lda, B.f32(), ldb, 0.3f,
                             C.data(), ldc);
          } else {
            cu::gemm16(dtype, ta, tb, s.M, s.N, s.K, 0.7f, A.d_b16(), lda, B.d_b16(), ldb, 0.3f,
                       dC.get(), ldc, nullptr);
            cpu::gemm16(dtype, ta, tb, s.M, s.N, s.K, 0.7f, A.b16(), lda, B.b16(), ldb, 0.3f,
                        C.data(), ldc);
          }
          expect_close(dC.to_host(), C, kSumTol,
                       "gemm M=" + std::to_string(s.M) + " ta=" + std::to_string(ta) +
                           " tb=" + std::to_string(tb) + dtype_tag(dtype));
        }
      }
    }
  }
}

TEST_F(CudaKernelsTest, MatmulForwardBackwardMatchesCpu) {
  struct Shape {
    int64_t N, C, OC;
  };
  for (const DType dtype : kGemmDtypes) {
    for (const Shape s : {Shape{37, 19, 23}, Shape{64, 48, 96}}) {
      for (const bool with_bias : {true, false}) {
        GemmInput inp(dtype, random_floats(s.N * s.C, 10));
        GemmInput weight(dtype, random_floats(s.OC * s.C, 11, 0.2f));
        // dout.f32() feeds dbias, dout.b16() the 16-bit GEMMs (mixed precision rounds it).
        GemmInput dout(dtype, random_floats(s.N * s.OC, 13));
        const auto bias = random_floats(s.OC, 12);
        auto out = std::vector<float>(s.N * s.OC);
        auto dinp = random_floats(s.N * s.C, 14);
        auto dweight = random_floats(s.OC * s.C, 15);
        auto dbias = random_floats(s.OC, 16);
        DeviceArray<float> d_bias(bias), d_out(out), d_dinp(dinp), d_dweight(dweight),
            d_dbias(dbias);
        const float* b = with_bias ? bias.data() : nullptr;
        float* d_b = with_bias ? d_bias.get() : nullptr;
        float* db = with_bias ? dbias.data() : nullptr;
        float* d_db = with_bias ? d_dbias.get() : nullptr;

        if (dtype == DType::F32) {
          cu::matmul_forward(d_out.get(), inp.d_f32(), weight.d_f32(), d_b, s.N, s.C, s.OC,
                             nullptr);
          cpu::matmul_forward<float>(out.data(), inp.f32(), weight.f32(), b, s.N, s.C, s.OC);
          cu::matmul_backward(d_dinp.get(), d_dweight.get(), d_db, dout.d_f32(), inp.d_f32(),
                              weight.d_f32(), s.N, s.C, s.OC, nullptr);
          cpu::matmul_backward<float>(dinp.data(), dweight.data(), db, dout.f32(), inp.f32(),
                                      weight.f32(), s.N, s.C, s.OC);
        } else {
          cu::matmul_forward16(dtype, d_out.get(), inp.d_b16(), weight.d_b16(), d_b, s.N, s.C, s.OC,
                               nullptr);
          cpu::matmul_forward16(dtype, out.data(), inp.b16(), weight.b16(), b, s.N, s.C, s.OC);
          cu::matmul_backward16(dtype, d_dinp.get(), d_dweight.get(), d_db, dout.d_b16(),
                                dout.d_f32(), inp.d_b16(), weight.d_b16(), s.N, s.C, s.OC, nullptr);
          cpu::matmul_backward16(dtype, dinp.data(), dweight.data(), db, dout.b16(), dout.f32(),
                                 inp.b16(), weight.b16(), s.N, s.C, s.OC);
        }
        const std::string tag =
            " N=" + std::to_string(s.N) + " bias=" + std::to_string(with_bias) + dtype_tag(dtype);
        expect_close(d_out.to_host(), out, kSumTol, "out" + tag);
        expect_close(d_dinp.to_host(), dinp, kSumTol, "dinp" + tag);
        expect_close(d_dweight.to_host(), dweight, kSumTol, "dweight" + tag);
        expect_close(d_dbias.to_host(), dbias, kSumTol, "dbias" + tag);
      }
    }
  }
}

TEST_F(CudaKernelsTest, LayerNormForwardBackwardMatchesCpu) {
  struct Shape {
    int64_t N, C;
  };
  for (const Shape s : {Shape{7, 33}, Shape{70, 768}}) {
    // A large mean checks the two-pass variance.
    const auto inp = random_floats(s.N * s.C, 20, 2.0f, 5.0f);
    const auto weight = random_floats(s.C, 21, 0.5f, 1.0f);
    const auto bias = random_floats(s.C, 22);
    const auto dout = random_floats(s.N * s.C, 23);
    std::vector<float> out(s.N * s.C), mean(s.N), rstd(s.N);
    auto dinp = random_floats(s.N * s.C, 24);
    auto dweight = random_floats(s.C, 25);
    auto dbias = random_floats(s.C, 26);
    DeviceArray<float> d_inp(inp), d_weight(weight), d_bias(bias), d_dout(dout), d_out(out),
        d_mean(mean), d_rstd(rstd), d_dinp(dinp), d_dweight(dweight), d_dbias(dbias);

    cu::layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_inp.get(), d_weight.get(),
                          d_bias.get(), s.N, s.C, nullptr);
    cpu::layernorm_forward<float>(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(),
                                  bias.data(), s.N, s.C);
    // Both backwards from the CPU's statistics, so only backward is compared.
    DeviceArray<float> d_cpu_mean(mean), d_cpu_rstd(rstd);
    cu::layernorm_backward(d_dinp.get(), d_dweight.get(), d_dbias.get(), d_dout.get(), d_inp.get(),
                           d_weight.get(), d_cpu_mean.get(), d_cpu_rstd.get(), s.N, s.C, nullptr);
    cpu::layernorm_backward<float>(dinp.data(), dweight.data(), dbias.data(), dout.data(),
                                   inp.data(), weight.data(), mean.data(), rstd.data(), s.N, s.C);
    const std::string tag = " C=" + std::to_string(s.C);
    expect_close(d_out.to_host(), out, kSumTol, "out" + tag);
    expect_close(d_mean.to_host(), mean, kSumTol, "mean" + tag);
    expect_close(d_rstd.to_host(), rstd, kSumTol, "rstd" + tag);
    expect_close(d_dinp.to_host(), dinp, kSumTol, "dinp" + tag);
    expect_close(d_dweight.to_host(), dweight, kSumTol, "dweight" + tag);
    expect_close(d_dbias.to_host(), dbias, kSumTol, "dbias" + tag);
  }
}

TEST_F(CudaKernelsTest, GeluAndResidualMatchCpu) {
  for (const int64_t n : {int64_t{1}, int64_t{4099}}) {
    const auto x = random_floats(n, 30, 2.0f);
    const auto y = random_floats(n, 31);
    const auto dout = random_floats(n, 32);
    std::vector<float> gelu_out(n), sum_out(n);
    auto dx = random_floats(n, 33);
    auto da = random_floats(n, 34);
    auto db = random_floats(n, 35);
    DeviceArray<float> d_x(x), d_y(y), d_dout(dout), d_gelu(gelu_out), d_sum(sum_out), d_dx(dx),
        d_da(da), d_db(db);

    cu::gelu_forward(d_gelu.get(), d_x.get(), n, nullptr);
    cu::gelu_backward(d_dx.get(), d_x.get(), d_dout.get(), n, nullptr);
    cu::residual_forward(d_sum.get(), d_x.get(), d_y.get(), n, nullptr);
    cu::residual_backward(d_da.get(), d_db.get(), d_dout.get(), n, nullptr);
    cpu::gelu_forward<float>(gelu_out.data(), x.data(), n);
    cpu::gelu_backward<float>(dx.data(), x.data(), dout.data(), n);
    cpu::residual_forward<float>(sum_out.data(), x.data(), y.data(), n);
    cpu::residual_backward<float>(da.data(), db.data(), dout.data(), n);
    const std::string tag = " n=" + std::to_string(n);
    expect_close(d_gelu.to_host(), gelu_out, kGeluTol, "gelu" + tag);
    expect_close(d_dx.to_host(), dx, kGeluTol, "gelu dinp" + tag);
    expect_close(d_sum.to_host(), sum_out, kElementTol, "residual" + tag);
    expect_close(d_da.to_host(), da, kElementTol, "residual da" + tag);
    expect_close(d_db.to_host(), db, kElementTol, "residual db" + tag);
  }
}

TEST_F(CudaKernelsTest, AttentionForwardBackwardMatchesCpu) {
  struct Shape {
    int B, T, C, NH;
  };
  // Head sizes 24 (odd tiling), 64 (GPT-2) and 128 (the largest; needs >48 KiB shared memory);
  // sequence lengths that end mid-tile.
  for (const Shape s : {Shape{2, 37, 48, 2}, Shape{1, 70, 128, 2}, Shape{1, 33, 256, 2}}) {
    const size_t bt = static_cast<size_t>(s.B) * s.T;
    const auto qkv = random_floats(bt * 3 * s.C, 40);
    const auto dout = random_floats(bt * s.C, 41);
    std::vector<float> out(bt * s.C), lse(static_cast<size_t>(s.B) * s.NH * s.T);
    auto dqkv = random_floats(bt * 3 * s.C, 42);
    DeviceArray<float> d_qkv(qkv), d_dout(dout), d_out(out), d_lse(lse), d_dqkv(dqkv);

    cu::attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH, nullptr);
    cpu::attention_forward<float>(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    const std::string tag = " T=" + std::to_string(s.T) + " hs=" + std::to_string(s.C / s.NH);
    expect_close(d_out.to_host(), out, kSumTol, "out" + tag);
    expect_close(d_lse.to_host(), lse, kSumTol, "lse" + tag);

    DeviceArray<float> d_cpu_out(out), d_cpu_lse(lse);
    cu::attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_cpu_out.get(),
                           d_cpu_lse.get(), s.B, s.T, s.C, s.NH, nullptr);
    cpu::attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(),
                                   s.B, s.T, s.C, s.NH);
    expect_close(d_dqkv.to_host(), dqkv, kSumTol, "dqkv" + tag);
  }
}

TEST_F(CudaKernelsTest, AttentionRejectsHeadSizeAbove128) {
  EXPECT_THROW(cu::attention_forward(nullptr, nullptr, nullptr, 1, 4, 512, 2, nullptr),
               tessera::InvalidArgument);
}

TEST_F(CudaKernelsTest, EmbeddingForwardBackwardMatchesCpu) {
  const int B = 3, T = 13, C = 17, V = 5;  // a tiny vocabulary: tokens repeat, atomics collide
  const auto tokens = random_tokens(static_cast<size_t>(B) * T, V, 50);
  const auto wte = random_floats(static_cast<size_t>(V) * C, 51);
  const auto wpe = random_floats(static_cast<size_t>(T) * C, 52);
  const auto dout = random_floats(static_cast<size_t>(B) * T * C, 53);
  std::vector<float> out(static_cast<size_t>(B) * T * C);
  auto dwte = random_floats(wte.size(), 54);
  auto dwpe = random_floats(wpe.size(), 55);
  DeviceArray<int32_t> d_tokens(tokens);
  DeviceArray<float> d_wte(wte), d_wpe(wpe), d_dout(dout), d_out(out), d_dwte(dwte), d_dwpe(dwpe);

  cu::embedding_forward(d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C, nullptr);
  cu::embedding_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tokens.get(), B, T, C,
                         nullptr);
  cpu::embedding_forward<float>(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  cpu::embedding_backward<float>(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  expect_close(d_out.to_host(), out, kElementTol, "out");
  expect_close(d_dwte.to_host(), dwte, kSumTol, "dwte");
  expect_close(d_dwpe.to_host(), dwpe, kSumTol, "dwpe");
}

TEST_F(CudaKernelsTest, LmHeadCrossEntropyMatchesCpu) {
  const int64_t C = 24, V = 101;
  for (const DType dtype : kGemmDtypes) {
    // One row, and enough rows for two CUDA chunks (the second one partial).
    for (const int64_t N : {int64_t{1}, cu::kHeadChunkRows + 37}) {
      for (const bool backward : {false, true}) {
        GemmInput x(dtype, random_floats(N * C, 60));
        GemmInput wte(dtype, random_floats(V * C, 61, 0.3f));
        const auto targets = random_tokens(N, static_cast<int>(V), 62);
        // grad_scale 1 and small starting gradients, so what backward adds is well above the
        // tolerance.
        const float grad_scale = 1.0f;
        auto dx = random_floats(N * C, 63, 0.01f);
        auto dwte = random_floats(V * C, 64, 0.01f);
        std::vector<float> losses(N);
        std::vector<float> cpu_scratch(cpu::kHeadChunkRows * V);
        std::vector<uint16_t> cpu_scratch16(cpu::kHeadChunkRows * V);
        DeviceArray<float> d_dx(dx), d_dwte(dwte), d_losses(losses),
            d_scratch{std::vector<float>(cu::kHeadChunkRows * V)};
        DeviceArray<uint16_t> d_scratch16{std::vector<uint16_t>(cu::kHeadChunkRows * V)};
        DeviceArray<int32_t> d_targets(targets);
        float* gpu_dx = backward ? d_dx.get() : nullptr;
        float* gpu_dwte = backward ? d_dwte.get() : nullptr;
        float* cpu_dx = backward ? dx.data() : nullptr;
        float* cpu_dwte = backward ? dwte.data() : nullptr;

        double gpu_sum = 0.0;
        double cpu_sum = 0.0;
        if (dtype == DType::F32) {
          gpu_sum = cu::lm_head_cross_entropy(gpu_dx, gpu_dwte, d_losses.get(), x.d_f32(),
                                              wte.d_f32(), d_targets.get(), N, C, V, grad_scale,
                                              d_scratch.get(), nullptr);
          cpu_sum = cpu::lm_head_cross_entropy<float>(cpu_dx, cpu_dwte, losses.data(), x.f32(),
                                                      wte.f32(), targets.data(), N, C, V,
                                                      grad_scale, cpu_scratch.data());
        } else {
          gpu_sum = cu::lm_head_cross_entropy16(dtype, gpu_dx, gpu_dwte, d_losses.get(), x.d_b16(),
                                                wte.d_b16(), d_targets.get(), N, C, V, grad_scale,
                                                d_scratch.get(), d_scratch16.get(), nullptr);
          cpu_sum = cpu::lm_head_cross_entropy16(dtype, cpu_dx, cpu_dwte, losses.data(), x.b16(),
                                                 wte.b16(), targets.data(), N, C, V, grad_scale,
                                                 cpu_scratch.data(), cpu_scratch16.data());
        }
        const std::string tag =
            " N=" + std::to_string(N) + " backward=" + std::to_string(backward) + dtype_tag(dtype);
        EXPECT_NEAR(gpu_sum, cpu_sum, kSumTol * (1.0 + std::abs(cpu_sum))) << tag;
        expect_close(d_losses.to_host(), losses, kSumTol, "losses" + tag);
        expect_close(d_dx.to_host(), dx, kSumTol, "dx" + tag);
        expect_close(d_dwte.to_host(), dwte, kSumTol, "dwte" + tag);
      }
    }
  }
}

// ---- the word embedding in vocabulary row chunks ----------------------------------------------

// Chunks of a vocabulary of 101: uneven, one of a single row. Pairs of (first row, rows).
const std::vector<std::pair<int64_t, int64_t>> kVocabChunks = {{0, 30}, {30, 1}, {31, 70}};
constexpr int64_t kChunkedV = 101;

// Columns [begin, begin + cols) of a row-major [N, V] matrix, as a contiguous [N, cols] one.
std::vector<float> columns(const std::vector<float>& m, int64_t N, int64_t V, int64_t begin,
                           int64_t cols) {
  std::vector<float> out(N * cols);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < cols; ++j) out[n * cols + j] = m[n * V + begin + j];
  }
  return out;
}

TEST_F(CudaKernelsTest, EmbeddingRowsMatchCpu) {
  const int B = 3, T = 13, C = 17;
  const int64_t V = kChunkedV, N = int64_t{B} * T;
  const auto tokens = random_tokens(N, static_cast<int>(V), 130);
  DeviceArray<int32_t> d_tokens(tokens);
  // Forward, for each storage: the same adds of the same widened values, so the same bits.
  for (const DType dtype : kGemmDtypes) {
    GemmInput wte(dtype, random_floats(V * C, 131));
    GemmInput wpe(dtype, random_floats(int64_t{T} * C, 132));
    std::vector<float> out(N * C);
    DeviceArray<float> d_out(random_floats(N * C, 133));  // overwritten by the positions
    if (dtype == DType::F32) {
      cu::position_embedding_forward(d_out.get(), wpe.d_f32(), B, T, C, nullptr);
      cpu::position_embedding_forward<float>(out.data(), wpe.f32(), B, T, C);
    } else {
      cu::position_embedding_forward16(dtype, d_out.get(), wpe.d_b16(), B, T, C, nullptr);
      cpu::position_embedding_forward16(dtype, out.data(), wpe.b16(), B, T, C);
    }
    for (const auto& [begin, rows] : kVocabChunks) {
      if (dtype == DType::F32) {
        cu::token_embedding_rows_forward(d_out.get(), d_tokens.get(), wte.d_f32() + begin * C,
                                         begin, rows, N, C, nullptr);
        cpu::token_embedding_rows_forward<float>(out.data(), tokens.data(), wte.f32() + begin * C,
                                                 begin, rows, N, C);
      } else {
        cu::token_embedding_rows_forward16(dtype, d_out.get(), d_tokens.get(),
                                           wte.d_b16() + begin * C, begin, rows, N, C, nullptr);
        cpu::token_embedding_rows_forward16(dtype, out.data(), tokens.data(), wte.b16() + begin * C,
                                            begin, rows, N, C);
      }
    }
    expect_same_bits(d_out.to_host(), out, "out" + dtype_tag(dtype));
  }

  // Backward: f32 gradients, starting non-zero; dwte by atomics, in another order.
  const auto dout = random_floats(N * C, 134);
  auto dwte = random_floats(V * C, 135);
  auto dwpe = random_floats(int64_t{T} * C, 136);
  DeviceArray<float> d_dout(dout), d_dwte(dwte), d_dwpe(dwpe);
  cu::position_embedding_backward(d_dwpe.get(), d_dout.get(), B, T, C, nullptr);
  cpu::position_embedding_backward<float>(dwpe.data(), dout.data(), B, T, C);
  for (const auto& [begin, rows] : kVocabChunks) {
    cu::token_embedding_rows_backward(d_dwte.get() + begin * C, d_dout.get(), d_tokens.get(), begin,
                                      rows, N, C, nullptr);
    cpu::token_embedding_rows_backward<float>(dwte.data() + begin * C, dout.data(), tokens.data(),
                                              begin, rows, N, C);
  }
  expect_close(d_dwte.to_host(), dwte, kSumTol, "dwte");
  expect_close(d_dwpe.to_host(), dwpe, kSumTol, "dwpe");
}

TEST_F(CudaKernelsTest, CrossEntropyChunksMatchCpu) {
  const int64_t V = kChunkedV;
  const float grad_scale = 0.5f;
  for (const int64_t N : {int64_t{1}, int64_t{300}}) {
    const auto logits = random_floats(N * V, 140, 2.0f);
    auto targets = random_tokens(N, static_cast<int>(V), 141);
    targets[0] = 30;  // the single-row chunk
    if (N > 2) {
      targets[1] = 0;
      targets[2] = static_cast<int32_t>(V - 1);
    }
    DeviceArray<int32_t> d_targets(targets);
    std::vector<float> max(N, -INFINITY), sum(N, 0.0f), target_logit(N, 0.0f), losses(N);
    DeviceArray<float> d_max(max), d_sum(sum), d_target_logit(target_logit), d_losses(losses);
    for (const auto& [begin, cols] : kVocabChunks) {
      const auto chunk = columns(logits, N, V, begin, cols);
      DeviceArray<float> d_chunk(chunk);
      cu::cross_entropy_fold(d_max.get(), d_sum.get(), d_target_logit.get(), d_chunk.get(),
                             d_targets.get(), N, cols, begin, nullptr);
      cpu::cross_entropy_fold<float>(max.data(), sum.data(), target_logit.data(), chunk.data(),
                                     targets.data(), N, cols, begin);
    }
    const std::string tag = " N=" + std::to_string(N);
    expect_same_bits(d_max.to_host(), max, "max" + tag);
    expect_close(d_sum.to_host(), sum, kSumTol, "sum" + tag);
    expect_same_bits(d_target_logit.to_host(), target_logit, "target_logit" + tag);

    const double gpu_sum = cu::cross_entropy_finish(d_max.get(), d_losses.get(), d_sum.get(),
                                                    d_target_logit.get(), N, nullptr);
    const double cpu_sum = cpu::cross_entropy_finish<float>(max.data(), losses.data(), sum.data(),
                                                            target_logit.data(), N);
    EXPECT_NEAR(gpu_sum, cpu_sum, kSumTol * (1.0 + std::abs(cpu_sum))) << tag;
    expect_close(d_max.to_host(), max, kSumTol, "lse" + tag);
    expect_close(d_losses.to_host(), losses, kSumTol, "losses" + tag);

    // Both backwards from the CPU's lse, so only backward is compared.
    DeviceArray<float> d_cpu_lse(max);
    for (const auto& [begin, cols] : kVocabChunks) {
      auto chunk = columns(logits, N, V, begin, cols);
      DeviceArray<float> d_chunk(chunk);
      cu::cross_entropy_chunk_backward(d_chunk.get(), d_cpu_lse.get(), d_targets.get(), N, cols,
                                       begin, grad_scale, nullptr);
      cpu::cross_entropy_chunk_backward<float>(chunk.data(), max.data(), targets.data(), N, cols,
                                               begin, grad_scale);
      expect_close(d_chunk.to_host(), chunk, kSumTol,
                   "dlogits of chunk " + std::to_string(begin) + tag);
    }
  }
  EXPECT_THROW(cu::cross_entropy_finish(nullptr, nullptr, nullptr, nullptr, 1, nullptr),
               tessera::InvalidArgument);
}

// Vocabulary parallelism's merge kernels and the row-parallel bias against the CPU's.
TEST_F(CudaKernelsTest, CrossEntropyMergeAndBiasAddMatchCpu) {
  const int64_t N = 300, C = 37;
  auto max = random_floats(N, 170, 5.0f), sum = random_floats(N, 171, 1.0f);
  for (int64_t n = 0; n < N; n += 7) sum[n] = 0.0f;  // rows nothing was folded into
  for (float& s : sum) s = std::abs(s);
  DeviceArray<float> d_max(max), d_sum(sum);
  cu::cross_entropy_mask_empty(d_max.get(), d_sum.get(), N, nullptr);
  cpu::cross_entropy_mask_empty<float>(max.data(), sum.data(), N);
  expect_same_bits(d_max.to_host(), max, "masked max");
  auto global = max;
  for (float& g : global) g += 0.25f;
  DeviceArray<float> d_global(global);
  cu::cross_entropy_rescale(d_max.get(), d_sum.get(), d_global.get(), N, nullptr);
  cpu::cross_entropy_rescale<float>(max.data(), sum.data(), global.data(), N);
  expect_same_bits(d_max.to_host(), max, "rescaled max");
  expect_close(d_sum.to_host(), sum, kSumTol, "rescaled sum");
  auto out = random_floats(N * C, 172), bias = random_floats(C, 173);
  DeviceArray<float> d_out(out), d_bias(bias);
  cu::bias_add(d_out.get(), d_bias.get(), N, C, nullptr);
  cpu::bias_add<float>(out.data(), bias.data(), N, C);
  expect_same_bits(d_out.to_host(), out, "bias_add");
}

// The ops tables end to end: the chunked embedding and head on the CUDA table (host token ids
// uploaded per call, ids and targets alternating; the loss sum without per-row losses) against
// the CPU table on the same stored values.
TEST_F(CudaKernelsTest, ChunkedOpsTableMatchesCpuTable) {
  namespace kernels = tessera::kernels;
  const int B = 2, T = 37, C = 24;
  const int64_t V = kChunkedV, N = int64_t{B} * T, max_cols = 70;
  const float grad_scale = 0.5f;
  const auto tokens = random_tokens(N, static_cast<int>(V), 160);
  const auto targets = random_tokens(N, static_cast<int>(V), 161);
  const auto x = random_floats(N * C, 162, 0.5f), wte = random_floats(V * C, 163, 0.3f);
  const auto wpe = random_floats(int64_t{T} * C, 164), dout = random_floats(N * C, 165);
  const auto dx0 = random_floats(N * C, 166, 0.01f), dwte0 = random_floats(V * C, 167, 0.01f);
  const auto dwpe0 = random_floats(int64_t{T} * C, 168, 0.01f);

  // Buffers of one run, on the table's device.
  struct Run {
    float *out, *dx, *dwte, *dwpe, *max, *sum, *target_logit, *logits;
    void* dout16;
    const void *x, *wte, *wpe;
    const float* dout;
  };
  auto run = [&](kernels::Ops<float>& ops, const Run& r) {
    ops.position_embedding_forward(r.out, r.wpe, B, T, C);
    for (const auto& [begin, rows] : kVocabChunks) {
      const void* wte_rows = ops.at(r.wte, begin * C);
      ops.token_embedding_rows_forward(r.out, tokens.data(), wte_rows, begin, rows, N, C);
      ops.linear_forward(r.logits, r.x, wte_rows, nullptr, N, C, rows);
      ops.cross_entropy_fold(r.max, r.sum, r.target_logit, r.logits, targets.data(), N, rows,
                             begin);
    }
    const double loss_sum = ops.cross_entropy_finish(r.max, nullptr, r.sum, r.target_logit, N);
    for (const auto& [begin, rows] : kVocabChunks) {
      const void* wte_rows = ops.at(r.wte, begin * C);
      ops.linear_forward(r.logits, r.x, wte_rows, nullptr, N, C, rows);
      ops.cross_entropy_chunk_backward(r.logits, r.max, targets.data(), N, rows, begin, grad_scale);
      ops.linear_backward(r.dx, r.dwte + begin * C, nullptr, r.logits, r.dout16, r.x, wte_rows, N,
                          C, rows);
    }
    ops.position_embedding_backward(r.dwpe, r.dout, B, T, C);
    for (const auto& [begin, rows] : kVocabChunks) {
      ops.token_embedding_rows_backward(r.dwte + begin * C, r.dout, tokens.data(), begin, rows, N,
                                        C);
    }
    return loss_sum;
  };

  for (const DType dtype : kGemmDtypes) {
    auto cpu_ops = kernels::make_ops<float>(tessera::Device::cpu(), dtype);
    auto gpu_ops = kernels::make_ops<float>(tessera::Device::cuda(0), dtype);
    auto stored = [&](const std::vector<float>& v) {
      std::vector<unsigned char> s(v.size() * cpu_ops->storage_size());
      cpu_ops->save(s.data(), v.data(), static_cast<int64_t>(v.size()));
      return s;
    };
    const auto x_s = stored(x), wte_s = stored(wte), wpe_s = stored(wpe);

    std::vector<float> out(N * C), dx = dx0, dwte = dwte0, dwpe = dwpe0, max(N, -INFINITY),
                                   sum(N, 0.0f), target_logit(N, 0.0f), logits(N * max_cols);
    std::vector<uint16_t> dout16(N * max_cols);
    DeviceArray<float> d_out(out), d_dx(dx), d_dwte(dwte), d_dwpe(dwpe), d_max(max), d_sum(sum),
        d_target_logit(target_logit), d_logits(logits), d_dout(dout);
    DeviceArray<uint16_t> d_dout16(dout16);
    DeviceArray<unsigned char> d_x_s(x_s), d_wte_s(wte_s), d_wpe_s(wpe_s);

    const double cpu_sum =
        run(*cpu_ops, {out.data(), dx.data(), dwte.data(), dwpe.data(), max.data(), sum.data(),
                       target_logit.data(), logits.data(), dout16.data(), x_s.data(), wte_s.data(),
                       wpe_s.data(), dout.data()});
    const double gpu_sum =
        run(*gpu_ops, {d_out.get(), d_dx.get(), d_dwte.get(), d_dwpe.get(), d_max.get(),
                       d_sum.get(), d_target_logit.get(), d_logits.get(), d_dout16.get(),
                       d_x_s.get(), d_wte_s.get(), d_wpe_s.get(), d_dout.get()});
    const std::string tag = dtype_tag(dtype);
    // A dlogit that rounds to the neighbouring 16-bit value on one backend moves a gradient by
    // an ulp of it (at most 0.5 here) times |x| or |wte| (below 2).
    const double grad_tol = dtype == DType::F32 ? kSumTol : kSumTol + ulp16(dtype);
    EXPECT_NEAR(gpu_sum, cpu_sum, kSumTol * (1.0 + std::abs(cpu_sum))) << tag;
    expect_same_bits(d_out.to_host(), out, "embedding out" + tag);
    expect_close(d_max.to_host(), max, kSumTol, "lse" + tag);
    expect_close(d_dx.to_host(), dx, grad_tol, "dx" + tag);
    expect_close(d_dwte.to_host(), dwte, grad_tol, "dwte" + tag);
    expect_close(d_dwpe.to_host(), dwpe, kSumTol, "dwpe" + tag);
  }
}

TEST_F(CudaKernelsTest, SumSquaresAndScaleMatchCpu) {
  for (const int64_t n : {int64_t{3}, int64_t{1000003}}) {
    auto x = random_floats(n, 70);
    DeviceArray<float> d_x(x);
    const double gpu = cu::sum_squares(d_x.get(), n, nullptr);
    const double want = cpu::sum_squares<float>(x.data(), n);
    EXPECT_NEAR(gpu, want, 1e-9 * want) << "n=" << n;  // both sum in double
    cu::scale(d_x.get(), 0.37f, n, nullptr);
    cpu::scale<float>(x.data(), 0.37f, n);
    expect_close(d_x.to_host(), x, kElementTol, "scale n=" + std::to_string(n));
  }
  EXPECT_EQ(cu::sum_squares(nullptr, 0, nullptr), 0.0);
}

TEST_F(CudaKernelsTest, AdamWMatchesCpuOverSteps) {
  const int64_t n = 1001;
  auto params = random_floats(n, 80);
  auto m = std::vector<float>(n, 0.0f);
  auto v = std::vector<float>(n, 0.0f);
  DeviceArray<float> d_params(params), d_m(m), d_v(v);
  cpu::AdamWParams p;
  p.lr = 1e-2f;
  p.weight_decay = 0.1f;
  p.grad_scale = 0.5f;
  for (int64_t step = 1; step <= 3; ++step) {
    p.step = step;
    const auto grads = random_floats(n, 81 + step);
    DeviceArray<float> d_grads(grads);
    cu::adamw_update(d_params.get(), d_grads.get(), d_m.get(), d_v.get(), n, p, nullptr);
    cpu::adamw_update<float>(params.data(), grads.data(), m.data(), v.data(), n, p);
  }
  expect_close(d_params.to_host(), params, kElementTol * 10, "params");
  expect_close(d_m.to_host(), m, kElementTol, "m");
  expect_close(d_v.to_host(), v, kElementTol, "v");
}

TEST_F(CudaKernelsTest, OpsRunOnACreatedStream) {
  const int64_t n = 777;
  const auto a = random_floats(n, 90);
  const auto b = random_floats(n, 91);
  std::vector<float> want(n);
  cpu::residual_forward<float>(want.data(), a.data(), b.data(), n);
  DeviceArray<float> d_a(a), d_b(b), d_out{std::vector<float>(n)};
  cu::Stream stream = cu::create_stream();
  cu::residual_forward(d_out.get(), d_a.get(), d_b.get(), n, stream);
  cu::synchronize(stream);
  std::vector<float> got(n);
  cu::copy_to_host(got.data(), d_out.get(), n * sizeof(float), stream);
  cu::destroy_stream(stream);
  expect_close(got, want, kElementTol, "residual on a stream");
}

// ---- mixed precision only ---------------------------------------------------------------------

// Values that exercise the rounding: random ones at several scales (f16 overflows past
// 65504 at the largest), then the edge cases appended.
std::vector<float> conversion_inputs() {
  std::vector<float> v;
  uint64_t seed = 100;
  for (const float scale : {1.0f, 1e-3f, 1e-6f, 3e4f}) {
    const auto r = random_floats(1000, seed++, scale);
    v.insert(v.end(), r.begin(), r.end());
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (const float x :
       {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), 65504.0f, 65519.0f,
        65520.0f, -65520.0f, 0x1p-24f, 0x1p-25f, 0x3p-25f, 0x1p-14f, 1e-8f}) {
    v.push_back(x);
  }
  // bf16 ties (1 + 2^-8 rounds down to even, 1 + 3 * 2^-8 up), an f16 tie (1 + 2^-11), and
  // an f32 subnormal (bf16 keeps it; the conversion is inline PTX without flush-to-zero).
  for (const uint32_t bits : {0x3f808000u, 0x3f818000u, 0x3f801000u, 0x00400000u, 0x807fffffu}) {
    v.push_back(std::bit_cast<float>(bits));
  }
  return v;
}

TEST_F(CudaKernelsTest, To16AndFrom16MatchHalfBitForBit) {
  const auto src = conversion_inputs();
  const auto n = static_cast<int64_t>(src.size());
  for (const DType dtype : kDtypes16) {
    DeviceArray<float> d_src(src), d_wide{std::vector<float>(src.size())};
    DeviceArray<uint16_t> d_narrow{std::vector<uint16_t>(src.size())};
    cu::to_16(dtype, d_src.get(), d_narrow.get(), n, nullptr);
    const auto want16 = round16(dtype, src);
    expect_same_bits16(d_narrow.to_host(), want16, dtype, "to_16" + dtype_tag(dtype));

    // Every 16-bit pattern widens exactly.
    std::vector<uint16_t> all(1 << 16);
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
    DeviceArray<uint16_t> d_all(all);
    DeviceArray<float> d_all_wide{std::vector<float>(all.size())};
    cu::from_16(dtype, d_all.get(), d_all_wide.get(), static_cast<int64_t>(all.size()), nullptr);
    expect_same_bits(d_all_wide.to_host(), widen16(dtype, all), "from_16" + dtype_tag(dtype));
  }
}

TEST_F(CudaKernelsTest, Accumulate16MatchesHalf) {
  const int64_t n = 4099;
  for (const DType dtype : kDtypes16) {
    // Normal values only: the f32 add runs under --use_fast_math, which flushes subnormals.
    const auto dst = round16(dtype, random_floats(n, 110));
    const auto src = random_floats(n, 111, 0.1f);
    std::vector<uint16_t> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = round16(dtype, widen16(dtype, dst[i]) + src[i]);
    DeviceArray<uint16_t> d_dst(dst);
    DeviceArray<float> d_src(src);
    cu::accumulate_16(dtype, d_dst.get(), d_src.get(), n, nullptr);
    expect_same_bits16(d_dst.to_host(), want, dtype, "accumulate_16" + dtype_tag(dtype));
  }
}

TEST_F(CudaKernelsTest, SumSquares16MatchesHostAndSeesNonFinite) {
  for (const DType dtype : kDtypes16) {
    for (const int64_t n : {int64_t{3}, int64_t{1000003}}) {
      const auto x = round16(dtype, random_floats(n, 120));
      double want = 0.0;
      for (const uint16_t h : x) want += static_cast<double>(widen16(dtype, h)) * widen16(dtype, h);
      DeviceArray<uint16_t> d_x(x);
      EXPECT_NEAR(cu::sum_squares16(dtype, d_x.get(), n, nullptr), want, 1e-9 * want)
          << "n=" << n << dtype_tag(dtype);  // both sum exact squares in double
    }
    const float inf = std::numeric_limits<float>::infinity();
    for (const float bad : {inf, std::numeric_limits<float>::quiet_NaN()}) {
      auto x = round16(dtype, random_floats(777, 121));
      x[500] = round16(dtype, bad);
      DeviceArray<uint16_t> d_x(x);
      EXPECT_FALSE(std::isfinite(cu::sum_squares16(dtype, d_x.get(), 777, nullptr)))
          << bad << dtype_tag(dtype);
    }
    EXPECT_EQ(cu::sum_squares16(dtype, nullptr, 0, nullptr), 0.0);
  }
}

TEST_F(CudaKernelsTest, Embedding16ForwardMatchesCpu) {
  const int B = 3, T = 13, C = 17, V = 5;
  const auto tokens = random_tokens(static_cast<size_t>(B) * T, V, 150);
  DeviceArray<int32_t> d_tokens(tokens);
  for (const DType dtype : kDtypes16) {
    const auto wte = round16(dtype, random_floats(static_cast<size_t>(V) * C, 151));
    const auto wpe = round16(dtype, random_floats(static_cast<size_t>(T) * C, 152));
    std::vector<float> out(static_cast<size_t>(B) * T * C);
    DeviceArray<uint16_t> d_wte(wte), d_wpe(wpe);
    DeviceArray<float> d_out(out);
    cu::embedding_forward16(dtype, d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C,
                            nullptr);
    cpu::embedding_forward16(dtype, out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    expect_close(d_out.to_host(), out, kElementTol, "out" + dtype_tag(dtype));
  }
}

TEST_F(CudaKernelsTest, AdamW16MatchesCpuOverSteps) {
  const int64_t n = 1001;
  cpu::AdamWParams p;
  p.lr = 1e-2f;
  p.weight_decay = 0.1f;
  p.grad_scale = 0.5f;
  p.l2 = 0.05f;
  for (const DType dtype : kDtypes16) {
    auto master = random_floats(n, 170);
    auto params16 = round16(dtype, master);
    auto m = std::vector<float>(n, 0.0f);
    auto v = std::vector<float>(n, 0.0f);
    DeviceArray<float> d_master(master), d_m(m), d_v(v);
    DeviceArray<uint16_t> d_params16(params16);
    for (int64_t step = 1; step <= 3; ++step) {
      p.step = step;
      const auto grads16 = round16(dtype, random_floats(n, 171 + step));
      DeviceArray<uint16_t> d_grads16(grads16);
      cu::adamw_update16(dtype, d_master.get(), d_params16.get(), d_grads16.get(), d_m.get(),
                         d_v.get(), n, p, nullptr);
      cpu::adamw_update16(dtype, master.data(), params16.data(), grads16.data(), m.data(), v.data(),
                          n, p);
    }
    const auto gpu_master = d_master.to_host();
    const auto gpu_params16 = d_params16.to_host();
    expect_close(gpu_master, master, kElementTol * 10, "master" + dtype_tag(dtype));
    expect_close(d_m.to_host(), m, kElementTol, "m" + dtype_tag(dtype));
    expect_close(d_v.to_host(), v, kElementTol, "v" + dtype_tag(dtype));
    // params16 is exactly the GPU's master rounded, and within one ulp of the CPU's.
    expect_same_bits16(gpu_params16, round16(dtype, gpu_master), dtype,
                       "params16 vs master" + dtype_tag(dtype));
    expect_close(widen16(dtype, gpu_params16), widen16(dtype, params16), ulp16(dtype),
                 "params16" + dtype_tag(dtype));
  }
}

TEST_F(CudaKernelsTest, MixedKernelsRejectNon16BitDtypes) {
  for (const DType dtype : {DType::F32, DType::F64, DType::U16}) {
    EXPECT_THROW(cu::to_16(dtype, nullptr, nullptr, 1, nullptr), tessera::InvalidArgument);
    EXPECT_THROW(cu::gemm16(dtype, false, false, 1, 1, 1, 1.0f, nullptr, 1, nullptr, 1, 0.0f,
                            nullptr, 1, nullptr),
                 tessera::InvalidArgument);
  }
}

// The CPU-only build's stub: no device, and a clear error instead of a link failure.
TEST(CudaStub, ThrowsNotCompiledWithoutCuda) {
  if (TESSERA_WITH_CUDA) GTEST_SKIP() << "built with CUDA";
  EXPECT_EQ(cu::device_count(), 0);
  try {
    cu::create_stream();
    FAIL() << "expected NotCompiled";
  } catch (const tessera::NotCompiled& e) {
    EXPECT_NE(std::string(e.what()).find("-DTESSERA_WITH_CUDA=ON"), std::string::npos) << e.what();
  }
}

}  // namespace
