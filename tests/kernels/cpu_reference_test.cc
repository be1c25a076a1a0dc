// Reference checks in float: each kernel's forward (and backward) against a naive loop
// written here with double accumulation, on random inputs whose sizes include 1, odd
// numbers and lengths that leave vectorised tails (n % 16 != 0) and cross the kernels'
// internal blocks. gemm is also checked in double. Gradient buffers start non-zero, so every
// backward comparison also checks that the kernel accumulates.
//
// Tolerances: max|kernel - reference| / max(1, max|reference|) below kFloatTol = 2e-5 for
// float (float rounding of dot products of a few hundred O(1) terms, plus the kernels'
// polynomial exp with ~2e-7 relative error), 1e-12 for the double gemm.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "runtime/kernels/cpu_kernels.h"
#include "tests/kernels/grad_check.h"

namespace tessera::kernels::cpu {
namespace {

using testing::random_tokens;
using testing::random_vector;
using testing::rel_error;
using Vec = std::vector<double>;
using FVec = std::vector<float>;

constexpr double kFloatTol = 2e-5;

FVec rand_f(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return random_vector<float>(n, seed, lo, hi);
}
Vec add(const FVec& a, const Vec& b) {
  Vec out(b);
  for (size_t i = 0; i < out.size(); ++i) out[i] += a[i];
  return out;
}

// ---------------------------------------------------------------------------------------
// gemm

struct GemmCase {
  bool trans_a, trans_b;
  int64_t M, N, K;
  double alpha, beta;
  int64_t pad;  // extra columns in every leading dimension: the operands are submatrices
};
void PrintTo(const GemmCase& g, std::ostream* os) {
  *os << fmt::format("trans_a={} trans_b={} M={} N={} K={} alpha={} beta={} pad={}", g.trans_a,
                     g.trans_b, g.M, g.N, g.K, g.alpha, g.beta, g.pad);
}

std::string gemm_case_name(const GemmCase& g) {
  // Test names allow only [A-Za-z0-9_]: alpha and beta in hundredths, 'm' for minus.
  auto num = [](double x) {
    const long v = std::lround(x * 100);
    return fmt::format("{}{}", v < 0 ? "m" : "", std::labs(v));
  };
  return fmt::format("{}{}_M{}_N{}_K{}_alpha{}_beta{}_pad{}", g.trans_a ? "T" : "N",
                     g.trans_b ? "T" : "N", g.M, g.N, g.K, num(g.alpha), num(g.beta), g.pad);
}

template <typename T>
void check_gemm(const GemmCase& g, double tol) {
  const auto [ta, tb, M, N, K, alpha, beta, pad] = g;
  // Stored shapes (row-major): A is [M,K] or, transposed, [K,M]; B is [K,N] or [N,K].
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
  const auto A = random_vector<T>(a_rows * lda, 101);
  const auto B = random_vector<T>(b_rows * ldb, 102);
  auto Cm = random_vector<T>(M * ldc, 103);
  const auto C0 = Cm;

  gemm<T>(ta, tb, M, N, K, static_cast<T>(alpha), A.data(), lda, B.data(), ldb,
          static_cast<T>(beta), Cm.data(), ldc);

  Vec got, want;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      want.push_back(double(T(alpha)) * acc + double(T(beta)) * C0[i * ldc + j]);
      got.push_back(Cm[i * ldc + j]);
    }
    // Columns past N belong to whoever owns the larger matrix: untouched.
    for (int64_t j = N; j < ldc; ++j) {
      ASSERT_EQ(Cm[i * ldc + j], C0[i * ldc + j]) << "padding at row " << i << " col " << j;
    }
  }
  EXPECT_LT(rel_error(got, want), tol);
}

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, FloatMatchesNaive) { check_gemm<float>(GetParam(), kFloatTol); }
TEST_P(GemmTest, DoubleMatchesNaive) { check_gemm<double>(GetParam(), 1e-12); }

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      cases.push_back({ta, tb, 1, 1, 1, 1.0, 0.0, 0});
      cases.push_back({ta, tb, 1, 7, 3, 1.0, 1.0, 2});
      cases.push_back({ta, tb, 5, 1, 4, 0.5, 0.0, 3});
      cases.push_back({ta, tb, 3, 4, 1, -2.0, 0.25, 1});
      cases.push_back({ta, tb, 17, 13, 9, 1.0, 0.0, 5});
      cases.push_back({ta, tb, 33, 65, 70, 0.75, -1.0, 7});
      cases.push_back({ta, tb, 4, 3, 0, 1.0, 0.5, 1});  // K = 0: C = beta * C
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, GemmTest, ::testing::ValuesIn(gemm_cases()),
                         [](const auto& info) { return gemm_case_name(info.param); });

// ---------------------------------------------------------------------------------------
// matmul

struct MatmulShape {
  int64_t N, C, OC;
};
void PrintTo(const MatmulShape& s, std::ostream* os) {
  *os << fmt::format("N={} C={} OC={}", s.N, s.C, s.OC);
}

class MatmulReferenceTest : public ::testing::TestWithParam<MatmulShape> {};

TEST_P(MatmulReferenceTest, ForwardAndBackwardMatchNaive) {
  const auto [N, C, OC] = GetParam();
  const FVec inp = rand_f(N * C, 111), weight = rand_f(OC * C, 112), bias = rand_f(OC, 113);
  const FVec dout = rand_f(N * OC, 114);

  Vec want_nobias(N * OC, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < OC; ++o) {
      double acc = 0.0;
      for (int64_t c = 0; c < C; ++c) acc += double(inp[n * C + c]) * weight[o * C + c];
      want_nobias[n * OC + o] = acc;
    }
  }
  Vec want_bias(want_nobias);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < OC; ++o) want_bias[n * OC + o] += bias[o];
  }
  FVec out(N * OC);
  matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), N, C, OC);
  EXPECT_LT(rel_error(out, want_bias), kFloatTol);
  matmul_forward<float>(out.data(), inp.data(), weight.data(), nullptr, N, C, OC);
  EXPECT_LT(rel_error(out, want_nobias), kFloatTol);

  Vec want_dinp(N * C, 0.0), want_dw(OC * C, 0.0), want_db(OC, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < OC; ++o) {
      const double d = dout[n * OC + o];
      want_db[o] += d;
      for (int64_t c = 0; c < C; ++c) {
        want_dinp[n * C + c] += d * weight[o * C + c];
        want_dw[o * C + c] += d * inp[n * C + c];
      }
    }
  }
  // Start from non-zero gradients: backward must add to them.
  const FVec dinp0 = rand_f(N * C, 115), dw0 = rand_f(OC * C, 116), db0 = rand_f(OC, 117);
  FVec dinp = dinp0, dw = dw0, db = db0;
  matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), weight.data(), N, C,
                  OC);
  EXPECT_LT(rel_error(dinp, add(dinp0, want_dinp)), kFloatTol);
  EXPECT_LT(rel_error(dw, add(dw0, want_dw)), kFloatTol);
  EXPECT_LT(rel_error(db, add(db0, want_db)), kFloatTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulReferenceTest,
                         ::testing::Values(MatmulShape{1, 1, 1}, MatmulShape{3, 5, 7},
                                           MatmulShape{37, 64, 48},
                                           MatmulShape{300, 17, 33},  // N past a 256-row block
                                           MatmulShape{8, 768, 3}));

// ---------------------------------------------------------------------------------------
// layernorm

struct LnRef {
  Vec out, mean, rstd;
};

LnRef naive_layernorm(const FVec& inp, const FVec& w, const FVec& b, int64_t N, int64_t C) {
  LnRef r{Vec(N * C), Vec(N), Vec(N)};
  for (int64_t n = 0; n < N; ++n) {
    double m = 0.0;
    for (int64_t c = 0; c < C; ++c) m += inp[n * C + c];
    m /= C;
    double var = 0.0;
    for (int64_t c = 0; c < C; ++c) var += (inp[n * C + c] - m) * (inp[n * C + c] - m);
    var /= C;  // biased, as GPT-2
    const double rs = 1.0 / std::sqrt(var + 1e-5);
    for (int64_t c = 0; c < C; ++c) r.out[n * C + c] = (inp[n * C + c] - m) * rs * w[c] + b[c];
    r.mean[n] = m;
    r.rstd[n] = rs;
  }
  return r;
}

class LayernormReferenceTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(LayernormReferenceTest, ForwardAndBackwardMatchNaive) {
  const int64_t N = 5, C = GetParam();
  // An offset mean, as activations have: the variance must not be computed as E[x^2]-E[x]^2.
  const FVec inp = rand_f(N * C, 121, 2.0, 4.0), w = rand_f(C, 122, 0.5, 1.5), b = rand_f(C, 123);
  const FVec dout = rand_f(N * C, 124);
  const LnRef ref = naive_layernorm(inp, w, b, N, C);
  FVec out(N * C), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
  EXPECT_LT(rel_error(out, ref.out), kFloatTol);
  EXPECT_LT(rel_error(mean, ref.mean), kFloatTol);
  // rstd is large for C = 1 (1/sqrt(eps) ~ 316): compare relatively.
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(rstd[n], ref.rstd[n], 1e-5 * ref.rstd[n]) << n;

  Vec want_dinp(N * C, 0.0), want_dw(C, 0.0), want_db(C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double mean_dnorm = 0.0, mean_dnorm_norm = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double norm = (inp[n * C + c] - ref.mean[n]) * ref.rstd[n];
      const double dnorm = double(dout[n * C + c]) * w[c];
      mean_dnorm += dnorm / C;
      mean_dnorm_norm += dnorm * norm / C;
      want_db[c] += dout[n * C + c];
      want_dw[c] += dout[n * C + c] * norm;
    }
    for (int64_t c = 0; c < C; ++c) {
      const double norm = (inp[n * C + c] - ref.mean[n]) * ref.rstd[n];
      const double dnorm = double(dout[n * C + c]) * w[c];
      want_dinp[n * C + c] = ref.rstd[n] * (dnorm - mean_dnorm - norm * mean_dnorm_norm);
    }
  }
  const FVec dinp0 = rand_f(N * C, 125), dw0 = rand_f(C, 126), db0 = rand_f(C, 127);
  FVec dinp = dinp0, dw = dw0, db = db0;
  layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                     mean.data(), rstd.data(), N, C);
  // dinp carries rstd (up to ~316 for C = 1, where the true gradient is 0): scale the
  // tolerance by it.
  double max_rstd = 0.0;
  for (double r : ref.rstd) max_rstd = std::max(max_rstd, r);
  EXPECT_LT(rel_error(dinp, add(dinp0, want_dinp)), kFloatTol * max_rstd);
  EXPECT_LT(rel_error(dw, add(dw0, want_dw)), kFloatTol);
  EXPECT_LT(rel_error(db, add(db0, want_db)), kFloatTol);
}

INSTANTIATE_TEST_SUITE_P(Channels, LayernormReferenceTest,
                         ::testing::Values(1, 3, 17, 64, 768));

// ---------------------------------------------------------------------------------------
// gelu and residual

double naive_gelu(double x) {
  const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
  return 0.5 * x * (1.0 + std::tanh(u));
}
double naive_gelu_grad(double x) {
  const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
  const double th = std::tanh(u);
  const double du = std::sqrt(2.0 / M_PI) * (1.0 + 3 * 0.044715 * x * x);
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
}

class ElementwiseReferenceTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(ElementwiseReferenceTest, GeluForwardAndBackwardMatchNaive) {
  const int64_t n = GetParam();
  FVec inp = rand_f(n, 131, -6.0, 6.0);
  // The far tails too, where tanh saturates (and exp-based tanh could overflow).
  if (n > 2) inp[0] = -30.0f, inp[n - 1] = 30.0f;
  const FVec dout = rand_f(n, 132);
  Vec want(n), want_d(n);
  for (int64_t i = 0; i < n; ++i) {
    want[i] = naive_gelu(inp[i]);
    want_d[i] = dout[i] * naive_gelu_grad(inp[i]);
  }
  FVec out(n);
  gelu_forward(out.data(), inp.data(), n);
  EXPECT_LT(rel_error(out, want), kFloatTol);
  const FVec dinp0 = rand_f(n, 133);
  FVec dinp = dinp0;
  gelu_backward(dinp.data(), inp.data(), dout.data(), n);
  EXPECT_LT(rel_error(dinp, add(dinp0, want_d)), kFloatTol);
}

TEST_P(ElementwiseReferenceTest, ResidualIsExact) {
  const int64_t n = GetParam();
  const FVec a = rand_f(n, 141), b = rand_f(n, 142), dout = rand_f(n, 143);
  FVec out(n);
  residual_forward(out.data(), a.data(), b.data(), n);
  FVec da = rand_f(n, 144), db = rand_f(n, 145);
  const FVec da0 = da, db0 = db;
  residual_backward(da.data(), db.data(), dout.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    // One float addition each: the result is exactly the rounded sum.
    ASSERT_EQ(out[i], a[i] + b[i]) << i;
    ASSERT_EQ(da[i], da0[i] + dout[i]) << i;
    ASSERT_EQ(db[i], db0[i] + dout[i]) << i;
  }
}

TEST_P(ElementwiseReferenceTest, ScaleIsExact) {
  const int64_t n = GetParam();
  FVec x = rand_f(n, 151);
  const FVec x0 = x;
  scale(x.data(), 0.37f, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], x0[i] * 0.37f) << i;
}

TEST_P(ElementwiseReferenceTest, SumSquaresAccumulatesInDouble) {
  const int64_t n = GetParam();
  const FVec x = rand_f(n, 161, -3.0, 3.0);
  double want = 0.0;
  for (float v : x) want += double(v) * v;
  EXPECT_NEAR(sum_squares(x.data(), n), want, 1e-12 * std::max(1.0, want));
}

INSTANTIATE_TEST_SUITE_P(Lengths, ElementwiseReferenceTest,
                         ::testing::Values(1, 2, 15, 16, 17, 63, 1000, 4099, 100003));

// ---------------------------------------------------------------------------------------
// attention

struct AttnShape {
  int B, T, C, NH;
};
void PrintTo(const AttnShape& s, std::ostream* os) {
  *os << fmt::format("B={} T={} C={} NH={}", s.B, s.T, s.C, s.NH);
}

// Materialises the full masked softmax per (b, h): P[t, j] for j <= t.
struct AttnRef {
  Vec out, lse, dqkv;
};

AttnRef naive_attention(const FVec& qkv, const FVec& dout, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const double scale = 1.0 / std::sqrt(double(hs));
  AttnRef r{Vec(int64_t{B} * T * C, 0.0), Vec(int64_t{B} * NH * T, 0.0),
            Vec(int64_t{B} * T * 3 * C, 0.0)};
  auto at = [&](int b, int t, int part, int h, int d) {
    return ((int64_t{b} * T + t) * 3 + part) * C + h * hs + d;
  };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      std::vector<Vec> P(T, Vec(T, 0.0));
      for (int t = 0; t < T; ++t) {
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          double s = 0.0;
          for (int d = 0; d < hs; ++d) s += double(qkv[at(b, t, 0, h, d)]) * qkv[at(b, j, 1, h, d)];
          P[t][j] = s * scale;
          mx = std::max(mx, P[t][j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= t; ++j) sum += std::exp(P[t][j] - mx);
        r.lse[(int64_t{b} * NH + h) * T + t] = mx + std::log(sum);
        for (int j = 0; j <= t; ++j) P[t][j] = std::exp(P[t][j] - mx) / sum;
        for (int d = 0; d < hs; ++d) {
          double o = 0.0;
          for (int j = 0; j <= t; ++j) o += P[t][j] * qkv[at(b, j, 2, h, d)];
          r.out[(int64_t{b} * T + t) * C + h * hs + d] = o;
        }
      }
      // Backward: dP = dO V^T, dS = P * (dP - sum_j P dP), dQ = dS K * scale, dK = dS^T Q * scale.
      for (int t = 0; t < T; ++t) {
        const float* dO = dout.data() + (int64_t{b} * T + t) * C + h * hs;
        Vec dP(t + 1);
        double rowdot = 0.0;
        for (int j = 0; j <= t; ++j) {
          double s = 0.0;
          for (int d = 0; d < hs; ++d) s += double(dO[d]) * qkv[at(b, j, 2, h, d)];
          dP[j] = s;
          rowdot += P[t][j] * s;
        }
        for (int j = 0; j <= t; ++j) {
          const double dS = P[t][j] * (dP[j] - rowdot) * scale;
          for (int d = 0; d < hs; ++d) {
            r.dqkv[at(b, t, 0, h, d)] += dS * qkv[at(b, j, 1, h, d)];
            r.dqkv[at(b, j, 1, h, d)] += dS * qkv[at(b, t, 0, h, d)];
            r.dqkv[at(b, j, 2, h, d)] += P[t][j] * dO[d];
          }
        }
      }
    }
  }
  return r;
}

class AttentionReferenceTest : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionReferenceTest, ForwardAndBackwardMatchNaive) {
  const auto [B, T, C, NH] = GetParam();
  const FVec qkv = rand_f(int64_t{B} * T * 3 * C, 171, -2.0, 2.0);
  const FVec dout = rand_f(int64_t{B} * T * C, 172);
  const AttnRef ref = naive_attention(qkv, dout, B, T, C, NH);
  FVec out(int64_t{B} * T * C), lse(int64_t{B} * NH * T);
  attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  EXPECT_LT(rel_error(out, ref.out), kFloatTol);
  EXPECT_LT(rel_error(lse, ref.lse), kFloatTol);
  const FVec dqkv0 = rand_f(qkv.size(), 173);
  FVec dqkv = dqkv0;
  attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  EXPECT_LT(rel_error(dqkv, add(dqkv0, ref.dqkv)), kFloatTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionReferenceTest,
                         ::testing::Values(AttnShape{1, 1, 8, 2}, AttnShape{2, 7, 12, 3},
                                           AttnShape{1, 64, 16, 1},   // exactly one block
                                           AttnShape{1, 65, 16, 2},   // one row past it
                                           AttnShape{2, 130, 32, 4},  // three blocks
                                           AttnShape{1, 200, 24, 3}),
                         [](const auto& info) {
                           const AttnShape& s = info.param;
                           return fmt::format("B{}_T{}_C{}_NH{}", s.B, s.T, s.C, s.NH);
                         });

// ---------------------------------------------------------------------------------------
// embedding

TEST(EmbeddingReferenceTest, ForwardAndBackwardMatchNaive) {
  // Few tokens, many positions: every token repeats, across batches and threads; C crosses
  // a 64-channel block and leaves a tail.
  for (int C : {1, 3, 64, 77}) {
    SCOPED_TRACE(C);
    const int B = 3, T = 50, V = 5;
    const std::vector<int32_t> tokens = random_tokens(B * T, V, 181);
    const FVec wte = rand_f(V * C, 182), wpe = rand_f(T * C, 183);
    const FVec dout = rand_f(int64_t{B} * T * C, 184);
    FVec out(int64_t{B} * T * C);
    embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    Vec want_dwte(V * C, 0.0), want_dwpe(T * C, 0.0);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        const int64_t bt = int64_t{b} * T + t;
        for (int c = 0; c < C; ++c) {
          ASSERT_EQ(out[bt * C + c], wte[tokens[bt] * C + c] + wpe[t * C + c]);
          want_dwte[tokens[bt] * C + c] += dout[bt * C + c];
          want_dwpe[t * C + c] += dout[bt * C + c];
        }
      }
    }
    const FVec dwte0 = rand_f(V * C, 185), dwpe0 = rand_f(T * C, 186);
    FVec dwte = dwte0, dwpe = dwpe0;
    embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    EXPECT_LT(rel_error(dwte, add(dwte0, want_dwte)), kFloatTol);
    EXPECT_LT(rel_error(dwpe, add(dwpe0, want_dwpe)), kFloatTol);
  }
}

// ---------------------------------------------------------------------------------------
// fused lm head + cross-entropy

struct HeadShape {
  int64_t N, C, V;
};
void PrintTo(const HeadShape& s, std::ostream* os) {
  *os << fmt::format("N={} C={} V={}", s.N, s.C, s.V);
}

class LmHeadReferenceTest : public ::testing::TestWithParam<HeadShape> {};

TEST_P(LmHeadReferenceTest, LossesAndGradientsMatchNaive) {
  const auto [N, C, V] = GetParam();
  const FVec x = rand_f(N * C, 191), wte = rand_f(V * C, 192);
  const std::vector<int32_t> targets = random_tokens(N, static_cast<int32_t>(V), 193);
  const float grad_scale = 1.0f / N;  // the trainer's mean over tokens

  Vec want_losses(N), want_dx(N * C, 0.0), want_dwte(V * C, 0.0), logits(V);
  double want_sum = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += double(x[n * C + c]) * wte[v * C + c];
      logits[v] = s;
      mx = std::max(mx, s);
    }
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[v] - mx);
    want_losses[n] = mx + std::log(sum) - logits[targets[n]];
    want_sum += want_losses[n];
    for (int64_t v = 0; v < V; ++v) {
      const double dl = (std::exp(logits[v] - mx) / sum - (v == targets[n])) * grad_scale;
      for (int64_t c = 0; c < C; ++c) {
        want_dx[n * C + c] += dl * wte[v * C + c];
        want_dwte[v * C + c] += dl * x[n * C + c];
      }
    }
  }

  FVec scratch(kHeadChunkRows * V), losses(N);
  const FVec dx0 = rand_f(N * C, 194, -1e-3, 1e-3), dwte0 = rand_f(V * C, 195, -1e-3, 1e-3);
  FVec dx = dx0, dwte = dwte0;
  const double got_sum = lm_head_cross_entropy(dx.data(), dwte.data(), losses.data(), x.data(),
                                               wte.data(), targets.data(), N, C, V, grad_scale,
                                               scratch.data());
  EXPECT_NEAR(got_sum, want_sum, kFloatTol * std::max(1.0, want_sum));
  EXPECT_LT(rel_error(losses, want_losses), kFloatTol);
  // Gradients are O(1/N): compare relative to their own size, not to 1.
  auto scaled_err = [](const FVec& got, const Vec& want) {
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(got[i] - want[i]));
      max_ref = std::max(max_ref, std::abs(want[i]));
    }
    return max_diff / max_ref;
  };
  EXPECT_LT(scaled_err(dx, add(dx0, want_dx)), 1e-4);
  EXPECT_LT(scaled_err(dwte, add(dwte0, want_dwte)), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LmHeadReferenceTest,
                         ::testing::Values(HeadShape{1, 1, 2}, HeadShape{7, 5, 37},
                                           HeadShape{kHeadChunkRows, 16, 50},  // one chunk
                                           // three chunks, the last partial
                                           HeadShape{2 * kHeadChunkRows + 44, 64, 37},
                                           HeadShape{kHeadChunkRows + 1, 33, 1001}),
                         [](const auto& info) {
                           const HeadShape& s = info.param;
                           return fmt::format("N{}_C{}_V{}", s.N, s.C, s.V);
                         });

}  // namespace
}  // namespace tessera::kernels::cpu
