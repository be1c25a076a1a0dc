// The mixed-precision kernels (cpu_mixed.h), bf16 and f16 alike, against references computed
// in double from the 16-bit-rounded inputs (runtime/core/half.h's scalar conversions, so the
// references do not depend on the converters under test), plus Adam's L2 term in the fp32
// adamw_update.
//
// Tolerances: products of two bf16 or two f16 values are exact in f32, so a 16-bit GEMM
// differs from the double reference only by f32 accumulation: rel_error (max|diff| /
// max(1, max|ref|)) below kGemmTol = 1e-5. Kernels that only widen, add and round are
// compared bit for bit. The fused head rounds dlogits to 16 bits by design; its gradients are
// checked tightly against a reference that rounds the same way, and within that rounding
// (2^-8 of the largest gradient for bf16, 2^-11 for f16) against the fp32 head.
#include "runtime/kernels/cpu_mixed.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <latch>
#include <limits>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "tests/kernels/grad_check.h"

namespace tessera::kernels::cpu {
namespace {

using testing::numeric_grad;
using testing::random_tokens;
using testing::random_vector;
using testing::rel_error;
using Vec = std::vector<double>;
using FVec = std::vector<float>;
using H16 = std::vector<uint16_t>;

constexpr double kGemmTol = 1e-5;

uint16_t round1(DType t, float f) {
  return t == DType::BF16 ? ::tessera::f32_to_bf16(f) : ::tessera::f32_to_f16(f);
}
float widen1(DType t, uint16_t h) {
  return t == DType::BF16 ? ::tessera::bf16_to_f32(h) : ::tessera::f16_to_f32(h);
}
H16 round16(DType t, const FVec& f) {
  H16 h(f.size());
  for (size_t i = 0; i < f.size(); ++i) h[i] = round1(t, f[i]);
  return h;
}
FVec widen(DType t, const H16& h) {
  FVec f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = widen1(t, h[i]);
  return f;
}
Vec to_double(const FVec& f) { return Vec(f.begin(), f.end()); }
// n random values in [lo, hi), rounded to 16 bits.
H16 rand16(DType t, int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return round16(t, random_vector<float>(n, seed, lo, hi));
}
Vec add(const FVec& a, const Vec& b) {
  Vec out(b);
  for (size_t i = 0; i < out.size(); ++i) out[i] += a[i];
  return out;
}
bool same_bits(const FVec& a, const FVec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string dtype_label(DType t) { return std::string(dtype_name(t)); }

class Mixed16Test : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(DTypes, Mixed16Test, ::testing::Values(DType::BF16, DType::F16),
                         [](const auto& info) { return dtype_label(info.param); });

// ---------------------------------------------------------------------------------------
// gemm16

struct Gemm16Case {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  int64_t pad;  // extra columns in every leading dimension
};
void PrintTo(const Gemm16Case& g, std::ostream* os) {
  *os << fmt::format("trans_a={} trans_b={} M={} N={} K={} alpha={} beta={} pad={}", g.ta, g.tb,
                     g.M, g.N, g.K, g.alpha, g.beta, g.pad);
}

std::vector<Gemm16Case> gemm16_cases() {
  std::vector<Gemm16Case> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      cases.push_back({ta, tb, 1, 1, 1, 1.0f, 0.0f, 0});
      cases.push_back({ta, tb, 1, 7, 3, 1.0f, 1.0f, 2});
      cases.push_back({ta, tb, 5, 1, 4, 0.5f, 0.0f, 3});
      cases.push_back({ta, tb, 3, 4, 1, -2.0f, 0.25f, 1});
      cases.push_back({ta, tb, 17, 13, 9, 1.0f, 0.0f, 5});
      cases.push_back({ta, tb, 33, 65, 70, 0.75f, -1.0f, 7});
      cases.push_back({ta, tb, 64, 96, 200, 1.0f, 1.0f, 0});
      cases.push_back({ta, tb, 4, 3, 0, 1.0f, 0.5f, 1});  // K = 0: C = beta * C
      cases.push_back({ta, tb, 0, 3, 5, 1.0f, 0.5f, 0});  // M = 0: nothing
      // Past the widening path's panel limits: two K blocks, and two M (then N) blocks.
      cases.push_back({ta, tb, 1030, 2, 4097, 1.0f, 0.5f, 1});
      cases.push_back({ta, tb, 2, 1030, 4097, 0.5f, 1.0f, 0});
    }
  }
  return cases;
}

// C = alpha op(A) op(B) + beta C in double, from the 16-bit A and B.
Vec naive_gemm16(DType t, const Gemm16Case& g, const H16& A, int64_t lda, const H16& B, int64_t ldb,
                 const FVec& C0, int64_t ldc) {
  Vec out(g.M * g.N);
  for (int64_t i = 0; i < g.M; ++i) {
    for (int64_t j = 0; j < g.N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < g.K; ++k) {
        const uint16_t a = g.ta ? A[k * lda + i] : A[i * lda + k];
        const uint16_t b = g.tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += double(widen1(t, a)) * widen1(t, b);
      }
      out[i * g.N + j] = double(g.alpha) * acc + double(g.beta) * C0[i * ldc + j];
    }
  }
  return out;
}

class Gemm16Test : public ::testing::TestWithParam<std::tuple<DType, Gemm16Case>> {};

TEST_P(Gemm16Test, MatchesDoubleReferenceOnRoundedInputs) {
  const auto [t, g] = GetParam();
  const int64_t a_rows = g.ta ? g.K : g.M, a_cols = g.ta ? g.M : g.K;
  const int64_t b_rows = g.tb ? g.N : g.K, b_cols = g.tb ? g.K : g.N;
  const int64_t lda = a_cols + g.pad, ldb = b_cols + g.pad, ldc = g.N + g.pad;
  const H16 A = rand16(t, a_rows * lda, 301), B = rand16(t, b_rows * ldb, 302);
  FVec C = random_vector<float>(g.M * ldc, 303);
  const FVec C0 = C;
  gemm16(t, g.ta, g.tb, g.M, g.N, g.K, g.alpha, A.data(), lda, B.data(), ldb, g.beta, C.data(),
         ldc);
  FVec got;
  for (int64_t i = 0; i < g.M; ++i) {
    got.insert(got.end(), C.begin() + i * ldc, C.begin() + i * ldc + g.N);
    for (int64_t j = g.N; j < ldc; ++j) {
      ASSERT_EQ(C[i * ldc + j], C0[i * ldc + j]) << "padding at row " << i << " col " << j;
    }
  }
  EXPECT_LT(rel_error(got, naive_gemm16(t, g, A, lda, B, ldb, C0, ldc)), kGemmTol);
}

std::string gemm16_case_name(const ::testing::TestParamInfo<std::tuple<DType, Gemm16Case>>& info) {
  const DType t = std::get<0>(info.param);
  const Gemm16Case& g = std::get<1>(info.param);
  auto num = [](float x) {  // test names allow [A-Za-z0-9_]: hundredths, 'm' for minus
    const long v = std::lround(x * 100);
    return fmt::format("{}{}", v < 0 ? "m" : "", std::labs(v));
  };
  return fmt::format("{}_{}{}_M{}_N{}_K{}_alpha{}_beta{}_pad{}", dtype_name(t), g.ta ? "T" : "N",
                     g.tb ? "T" : "N", g.M, g.N, g.K, num(g.alpha), num(g.beta), g.pad);
}
INSTANTIATE_TEST_SUITE_P(Cases, Gemm16Test,
                         ::testing::Combine(::testing::Values(DType::BF16, DType::F16),
                                            ::testing::ValuesIn(gemm16_cases())),
                         gemm16_case_name);

// beta = 0 means C is not read: NaN there must not leak into the result (BLAS semantics).
TEST_P(Mixed16Test, Gemm16BetaZeroIgnoresNanInC) {
  const DType t = GetParam();
  const H16 A = rand16(t, 6 * 5, 311), B = rand16(t, 5 * 7, 312);
  FVec C(6 * 7, std::numeric_limits<float>::quiet_NaN());
  gemm16(t, false, false, 6, 7, 5, 1.0f, A.data(), 5, B.data(), 7, 0.0f, C.data(), 7);
  for (float c : C) ASSERT_TRUE(std::isfinite(c));
}

TEST(Gemm16ArgumentsTest, RejectsOtherDtypesAndShortLeadingDimensions) {
  const H16 A(16, 0), B(16, 0);
  FVec C(16, 0.0f);
  EXPECT_THROW(
      gemm16(DType::F32, false, false, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2),
      InvalidArgument);
  EXPECT_THROW(
      gemm16(DType::BF16, false, false, 2, 2, 3, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2),
      InvalidArgument);  // lda 2 < K 3
  EXPECT_THROW(to_16(DType::I32, C.data(), nullptr, 0), InvalidArgument);
}

// Thread ranks call gemm16 at once: four threads, each with its own OpenMP team, race to
// build plans (two of them share one shape, hence one primitive) and run them; every result
// must equal the same call made alone afterwards, bit for bit.
TEST(Gemm16ConcurrencyTest, FourThreadsAtOnceMatchOneAtATime) {
  struct Job {
    DType t;
    bool ta, tb;
    int64_t M, N, K;
  };
  const Job jobs[] = {{DType::BF16, false, true, 61, 47, 83},
                      {DType::BF16, false, true, 61, 47, 83},
                      {DType::BF16, true, false, 45, 38, 129},
                      {DType::F16, false, false, 52, 33, 71}};
  constexpr int kJobs = 4, kRepeats = 3;
  std::vector<H16> a(kJobs), b(kJobs);
  for (int j = 0; j < kJobs; ++j) {
    a[j] = rand16(jobs[j].t, jobs[j].M * jobs[j].K, 320 + j);
    b[j] = rand16(jobs[j].t, jobs[j].K * jobs[j].N, 330 + j);
  }
  auto run = [&](int j, FVec& c) {
    const Job& job = jobs[j];
    c.assign(job.M * job.N, 1.0f);
    gemm16(job.t, job.ta, job.tb, job.M, job.N, job.K, 1.0f, a[j].data(), job.ta ? job.M : job.K,
           b[j].data(), job.tb ? job.K : job.N, 0.5f, c.data(), job.N);
  };
  const int team = omp_get_max_threads();
  std::vector<std::vector<FVec>> concurrent(kJobs, std::vector<FVec>(kRepeats));
  std::vector<std::exception_ptr> errors(kJobs);
  std::latch start(kJobs);
  std::vector<std::thread> threads;
  for (int j = 0; j < kJobs; ++j) {
    threads.emplace_back([&, j] {
      try {
        omp_set_num_threads(team);  // the same team size as the serial calls below
        start.arrive_and_wait();
        for (int r = 0; r < kRepeats; ++r) run(j, concurrent[j][r]);
      } catch (...) {
        errors[j] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  for (int j = 0; j < kJobs; ++j) {
    FVec alone;
    run(j, alone);
    for (int r = 0; r < kRepeats; ++r) {
      EXPECT_TRUE(same_bits(concurrent[j][r], alone)) << "job " << j << " repeat " << r;
    }
  }
}

// ---------------------------------------------------------------------------------------
// matmul

TEST_P(Mixed16Test, MatmulForwardMatchesDoubleReference) {
  const DType t = GetParam();
  for (auto [N, C, OC] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 5, 7}, {300, 17, 33}, {8, 768, 3}}) {
    SCOPED_TRACE(fmt::format("N={} C={} OC={}", N, C, OC));
    const H16 inp = rand16(t, N * C, 341), weight = rand16(t, OC * C, 342);
    const FVec bias = random_vector<float>(OC, 343);
    Vec want(N * OC);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t o = 0; o < OC; ++o) {
        double acc = 0.0;
        for (int64_t c = 0; c < C; ++c)
          acc += double(widen1(t, inp[n * C + c])) * widen1(t, weight[o * C + c]);
        want[n * OC + o] = acc;
      }
    }
    // No bias: the output is written, not read (NaN there must vanish).
    FVec out(N * OC, std::numeric_limits<float>::quiet_NaN());
    matmul_forward16(t, out.data(), inp.data(), weight.data(), nullptr, N, C, OC);
    EXPECT_LT(rel_error(out, want), kGemmTol);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t o = 0; o < OC; ++o) want[n * OC + o] += bias[o];
    }
    matmul_forward16(t, out.data(), inp.data(), weight.data(), bias.data(), N, C, OC);
    EXPECT_LT(rel_error(out, want), kGemmTol);
  }
}

// The gradients of L = sum(out * r), out = inp @ weight^T + bias, against central differences
// in double of that layer on the rounded inputs. r is 16-bit representable, so dout16 is dout
// exactly and the kernel's gradients are exact up to f32 accumulation. Gradient buffers start
// non-zero: backward accumulates.
TEST_P(Mixed16Test, MatmulBackwardMatchesFiniteDifferences) {
  const DType t = GetParam();
  const int64_t N = 5, C = 7, OC = 9;
  const H16 inp16 = rand16(t, N * C, 351), w16 = rand16(t, OC * C, 352);
  const H16 dout16 = rand16(t, N * OC, 353);
  Vec inp = to_double(widen(t, inp16)), w = to_double(widen(t, w16));
  Vec bias = random_vector(OC, 354);
  const FVec dout = widen(t, dout16);
  auto loss = [&] {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t o = 0; o < OC; ++o) {
        double out = bias[o];
        for (int64_t c = 0; c < C; ++c) out += inp[n * C + c] * w[o * C + c];
        s += out * dout[n * OC + o];
      }
    }
    return s;
  };
  const Vec want_dinp = numeric_grad(inp, loss), want_dw = numeric_grad(w, loss);
  const Vec want_db = numeric_grad(bias, loss);

  const FVec dinp0 = random_vector<float>(N * C, 355), dw0 = random_vector<float>(OC * C, 356);
  const FVec db0 = random_vector<float>(OC, 357);
  FVec dinp = dinp0, dw = dw0, db = db0;
  matmul_backward16(t, dinp.data(), dw.data(), db.data(), dout16.data(), dout.data(), inp16.data(),
                    w16.data(), N, C, OC);
  EXPECT_LT(rel_error(dinp, add(dinp0, want_dinp)), kGemmTol);
  EXPECT_LT(rel_error(dw, add(dw0, want_dw)), kGemmTol);
  EXPECT_LT(rel_error(db, add(db0, want_db)), kGemmTol);

  // dinp and dbias are optional.
  FVec dw_only = dw0;
  matmul_backward16(t, nullptr, dw_only.data(), nullptr, dout16.data(), dout.data(), inp16.data(),
                    w16.data(), N, C, OC);
  EXPECT_TRUE(same_bits(dw_only, dw));
}

// dbias sums the f32 gradient, not its 16-bit rounding (the sums of 300 rows would carry 300
// roundings otherwise).
TEST_P(Mixed16Test, MatmulBackwardBiasSumsTheUnroundedGradient) {
  const DType t = GetParam();
  const int64_t N = 300, C = 4, OC = 37;
  const FVec dout = random_vector<float>(N * OC, 361);
  const H16 dout16 = round16(t, dout);
  const H16 inp16 = rand16(t, N * C, 362), w16 = rand16(t, OC * C, 363);
  Vec want(OC, 0.0), rounded(OC, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < OC; ++o) {
      want[o] += dout[n * OC + o];
      rounded[o] += widen1(t, dout16[n * OC + o]);
    }
  }
  ASSERT_GT(rel_error(rounded, want), 1e-4)
      << "the two sums must differ for the test to mean anything";
  FVec db(OC, 0.0f);
  matmul_backward16(t, nullptr, nullptr, db.data(), dout16.data(), dout.data(), inp16.data(),
                    w16.data(), N, C, OC);
  EXPECT_LT(rel_error(db, want), 1e-5);
}

// ---------------------------------------------------------------------------------------
// lm head

TEST_P(Mixed16Test, LmHeadMatchesFloatHeadOnRoundedInputs) {
  const DType t = GetParam();
  // Two chunks, the last partial; V leaves vector tails.
  const int64_t N = kHeadChunkRows + 44, C = 24, V = 77;
  const float grad_scale = 0.5f;
  const H16 x16 = rand16(t, N * C, 371), wte16 = rand16(t, V * C, 372);
  const FVec x = widen(t, x16), wte = widen(t, wte16);
  const auto targets = random_tokens(N, static_cast<int32_t>(V), 373);
  const FVec dx0 = random_vector<float>(N * C, 374), dwte0 = random_vector<float>(V * C, 375);

  FVec dx = dx0, dwte = dwte0, losses(N), scratch(kHeadChunkRows * V);
  H16 scratch16(kHeadChunkRows * V);
  const double sum = lm_head_cross_entropy16(t, dx.data(), dwte.data(), losses.data(), x16.data(),
                                             wte16.data(), targets.data(), N, C, V, grad_scale,
                                             scratch.data(), scratch16.data());
  FVec fdx = dx0, fdwte = dwte0, flosses(N);
  const double fsum =
      lm_head_cross_entropy<float>(fdx.data(), fdwte.data(), flosses.data(), x.data(), wte.data(),
                                   targets.data(), N, C, V, grad_scale, scratch.data());
  EXPECT_NEAR(sum, fsum, 1e-5 * std::abs(fsum));
  EXPECT_LT(rel_error(losses, flosses), 1e-5);

  // The tight reference: softmax in double, dlogits rounded to 16 bits as the kernel does.
  Vec want_dx = to_double(dx0), want_dwte = to_double(dwte0);
  for (int64_t n = 0; n < N; ++n) {
    Vec logits(V);
    double mx = -INFINITY, z = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      for (int64_t c = 0; c < C; ++c) logits[j] += double(x[n * C + c]) * wte[j * C + c];
      mx = std::max(mx, logits[j]);
    }
    for (int64_t j = 0; j < V; ++j) z += std::exp(logits[j] - mx);
    for (int64_t j = 0; j < V; ++j) {
      const double d = (std::exp(logits[j] - mx) / z - (j == targets[n] ? 1.0 : 0.0)) * grad_scale;
      const double d16 = widen1(t, round1(t, static_cast<float>(d)));
      for (int64_t c = 0; c < C; ++c) {
        want_dx[n * C + c] += d16 * wte[j * C + c];
        want_dwte[j * C + c] += d16 * x[n * C + c];
      }
    }
  }
  EXPECT_LT(rel_error(dx, want_dx), 1e-4);
  EXPECT_LT(rel_error(dwte, want_dwte), 1e-4);
  // Against the fp32 head: within the dlogits rounding, and not equal to it (it does round).
  const double unit = t == DType::BF16 ? 1.0 / 256 : 1.0 / 2048;
  EXPECT_LT(rel_error(dx, to_double(fdx)), unit);
  EXPECT_LT(rel_error(dwte, to_double(fdwte)), unit);
  EXPECT_FALSE(same_bits(dx, fdx));

  // Forward only: the same losses, gradients untouched.
  FVec losses_only(N);
  const double sum_only =
      lm_head_cross_entropy16(t, nullptr, nullptr, losses_only.data(), x16.data(), wte16.data(),
                              targets.data(), N, C, V, grad_scale, scratch.data(), nullptr);
  EXPECT_EQ(sum_only, sum);
  EXPECT_TRUE(same_bits(losses_only, losses));
}

// ---------------------------------------------------------------------------------------
// element-wise

TEST_P(Mixed16Test, EmbeddingForwardIsWidenedSumExactly) {
  const DType t = GetParam();
  const int B = 3, T_ = 5, C = 4100, V = 11;  // C past one 4096-element block
  const H16 wte = rand16(t, int64_t{V} * C, 381), wpe = rand16(t, int64_t{T_} * C, 382);
  const auto tokens = random_tokens(B * T_, V, 383);
  FVec out(int64_t{B} * T_ * C), want(out.size());
  for (int64_t bt = 0; bt < B * T_; ++bt) {
    for (int64_t c = 0; c < C; ++c) {
      want[bt * C + c] =
          widen1(t, wte[tokens[bt] * int64_t{C} + c]) + widen1(t, wpe[(bt % T_) * C + c]);
    }
  }
  embedding_forward16(t, out.data(), tokens.data(), wte.data(), wpe.data(), B, T_, C);
  EXPECT_TRUE(same_bits(out, want));
}

// Random values plus the special ones: zeros, infinities, NaN, f16's largest and a subnormal.
FVec with_specials(FVec f) {
  const float specials[] = {0.0f,     -0.0f,    INFINITY, -INFINITY, NAN,
                            65504.0f, 65520.0f, 3e-8f,    1e-40f};
  for (size_t i = 0; i < std::size(specials) && i < f.size(); ++i)
    f[i * 7 % f.size()] = specials[i];
  return f;
}

TEST_P(Mixed16Test, ConversionsMatchScalarReference) {
  const DType t = GetParam();
  for (int64_t n : {1, 33, 70001}) {
    const FVec f = with_specials(random_vector<float>(n, 391, -70000.0, 70000.0));
    H16 h(n);
    to_16(t, f.data(), h.data(), n);
    EXPECT_EQ(h, round16(t, f)) << n;
    FVec back(n);
    from_16(t, h.data(), back.data(), n);
    const FVec want = widen(t, h);
    for (int64_t i = 0; i < n; ++i) {
      // NaN compares unequal to itself; the bits may differ only in a quieted signalling NaN.
      if (std::isnan(want[i])) {
        ASSERT_TRUE(std::isnan(back[i])) << i;
      } else {
        ASSERT_EQ(back[i], want[i]) << i;
      }
    }
  }
}

TEST_P(Mixed16Test, AccumulateRoundsLikeScalarReference) {
  const DType t = GetParam();
  for (int64_t n : {1, 4097, 300001}) {  // one block, a partial second, the threaded path
    H16 dst = rand16(t, n, 401, -4.0, 4.0);
    const FVec src = random_vector<float>(n, 402, -1e-2, 1e-2);  // small: rounding decides
    H16 want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = round1(t, widen1(t, dst[i]) + src[i]);
    accumulate_16(t, dst.data(), src.data(), n);
    EXPECT_EQ(dst, want) << n;
  }
}

TEST_P(Mixed16Test, SumSquaresInDoubleAndNonFiniteShowsThrough) {
  const DType t = GetParam();
  for (int64_t n : {0, 1, 4097, 300001}) {
    const H16 x = rand16(t, n, 411, -300.0, 300.0);
    double want = 0.0;
    for (uint16_t h : x) want += double(widen1(t, h)) * widen1(t, h);
    EXPECT_NEAR(sum_squares16(t, x.data(), n), want, 1e-12 * want) << n;
  }
  H16 x = rand16(t, 5000, 412);
  x[4321] = round1(t, INFINITY);
  EXPECT_TRUE(std::isinf(sum_squares16(t, x.data(), 5000)));
  x[4321] = round1(t, -INFINITY);
  EXPECT_TRUE(std::isinf(sum_squares16(t, x.data(), 5000)));
  x[17] = round1(t, NAN);
  EXPECT_TRUE(std::isnan(sum_squares16(t, x.data(), 5000)));
}

// ---------------------------------------------------------------------------------------
// AdamW

AdamWParams test_adamw_params(int64_t step) {
  AdamWParams p;
  p.lr = 1e-3f;
  p.weight_decay = 0.1f;
  p.l2 = 0.05f;
  p.grad_scale = 0.8f;
  p.step = step;
  return p;
}

// Three steps of adamw_update16 against adamw_update<float> on the widened gradients: the
// master weights and moments bit for bit, the 16-bit params the master rounded.
TEST_P(Mixed16Test, AdamWMatchesFloatAdamWBitForBit) {
  const DType t = GetParam();
  for (int64_t n : {1, 4097, 100003}) {
    SCOPED_TRACE(n);
    FVec master = random_vector<float>(n, 421), m(n, 0.0f), v(n, 0.0f);
    FVec fmaster = master, fm = m, fv = v;
    H16 params16(n);
    for (int64_t step = 1; step <= 3; ++step) {
      const H16 grads16 = rand16(t, n, 430 + step);
      const FVec grads = widen(t, grads16);
      adamw_update16(t, master.data(), params16.data(), grads16.data(), m.data(), v.data(), n,
                     test_adamw_params(step));
      adamw_update<float>(fmaster.data(), grads.data(), fm.data(), fv.data(), n,
                          test_adamw_params(step));
      ASSERT_TRUE(same_bits(master, fmaster)) << "step " << step;
      ASSERT_TRUE(same_bits(m, fm)) << "step " << step;
      ASSERT_TRUE(same_bits(v, fv)) << "step " << step;
      ASSERT_EQ(params16, round16(t, master)) << "step " << step;
    }
  }
}

// L2 adds l2 * p to the gradient before the moments. With g = 0 and weight decay 0, step 1:
// g' = l2 p, mhat = g', sqrt(vhat) = |g'|, so p moves by lr * sign(p) (eps aside): toward 0.
// Unlike weight decay, it goes through Adam's normalisation: the step does not scale with p.
template <typename T>
void check_l2_hand_computed() {
  std::vector<T> p = {2.0, -0.5, 0.0}, g(3, 0.0), m(3, 0.0), v(3, 0.0);
  AdamWParams hp;
  hp.lr = 0.1f;
  hp.l2 = 0.5f;
  hp.step = 1;
  adamw_update(p.data(), g.data(), m.data(), v.data(), 3, hp);
  EXPECT_NEAR(p[0], 2.0 - 0.1, 1e-6);
  EXPECT_NEAR(p[1], -0.5 + 0.1, 1e-6);
  EXPECT_EQ(p[2], 0.0);
  EXPECT_NEAR(m[0], (1 - double(hp.beta1)) * 1.0, 1e-6);     // g' = 0.5 * 2
  EXPECT_NEAR(v[1], (1 - double(hp.beta2)) * 0.0625, 1e-9);  // g'^2 = (0.5 * -0.5)^2
}
TEST(AdamWL2Test, HandComputedFloat) { check_l2_hand_computed<float>(); }
TEST(AdamWL2Test, HandComputedDouble) { check_l2_hand_computed<double>(); }

// With grad_scale 1, L2 is the plain rule on the gradient g + l2 * p (adamw_update's other
// terms are checked against a double loop in cpu_optimizer_test.cc); weight decay on top.
template <typename T>
void check_l2_is_gradient_term() {
  const int64_t n = 1003;
  const auto p0 = random_vector<T>(n, 441), m0 = random_vector<T>(n, 442, -0.1, 0.1);
  const auto v0 = random_vector<T>(n, 443, 0.0, 0.01), g = random_vector<T>(n, 444);
  AdamWParams hp = test_adamw_params(7);
  hp.grad_scale = 1.0f;
  auto p = p0, m = m0, v = v0;
  adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp);
  std::vector<T> g_l2(n), p_plain = p0, m_plain = m0, v_plain = v0;
  for (int64_t i = 0; i < n; ++i) g_l2[i] = g[i] + T(hp.l2) * p0[i];
  hp.l2 = 0.0f;
  adamw_update(p_plain.data(), g_l2.data(), m_plain.data(), v_plain.data(), n, hp);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  EXPECT_LT(rel_error(m, m_plain), tol);
  EXPECT_LT(rel_error(v, v_plain), tol);
  EXPECT_LT(rel_error(p, p_plain), tol);
  EXPECT_GT(rel_error(p, p0), 1e-4);  // and the step did move the parameters
}
TEST(AdamWL2Test, IsAGradientTermFloat) { check_l2_is_gradient_term<float>(); }
TEST(AdamWL2Test, IsAGradientTermDouble) { check_l2_is_gradient_term<double>(); }

}  // namespace
}  // namespace tessera::kernels::cpu
