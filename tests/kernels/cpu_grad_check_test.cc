// Gradient checks in double: every backward kernel in cpu_kernels.h against central finite
// differences of its forward, over every input element (or a deterministic sample of them
// for the larger attention shapes). The objective is L = sum(out * R) for a fixed random R,
// so dL/dout = R is the upstream gradient fed to backward; for the fused head the objective
// is the loss itself. Backward accumulates, so analytic gradients start from zero, and each
// kernel family also has a test that a second backward call doubles them.
//
// Tolerance: kGradTol = 1e-6 on max|analytic - numeric| / max(1, max|numeric|) (see
// grad_check.h for why finite differences in double are good to ~1e-10 here).
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

using testing::dot;
using testing::gather;
using testing::kGradTol;
using testing::numeric_grad;
using testing::random_tokens;
using testing::random_vector;
using testing::rel_error;
using testing::sample_indices;
using Vec = std::vector<double>;

Vec times(const Vec& v, double s) {
  Vec out(v);
  for (double& x : out) x *= s;
  return out;
}

// ---------------------------------------------------------------------------------------
// matmul

struct MatmulShape {
  int64_t N, C, OC;
};
void PrintTo(const MatmulShape& s, std::ostream* os) {
  *os << fmt::format("N={} C={} OC={}", s.N, s.C, s.OC);
}

class MatmulGradTest : public ::testing::TestWithParam<MatmulShape> {};

TEST_P(MatmulGradTest, MatchesFiniteDifferences) {
  const auto [N, C, OC] = GetParam();
  Vec inp = random_vector(N * C, 1), weight = random_vector(OC * C, 2);
  Vec bias = random_vector(OC, 3), r = random_vector(N * OC, 4);
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias");
    Vec out(N * OC);
    auto loss = [&] {
      matmul_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, N,
                     C, OC);
      return dot(out, r);
    };
    Vec dinp(N * C, 0.0), dweight(OC * C, 0.0), dbias(OC, 0.0);
    matmul_backward(dinp.data(), dweight.data(), with_bias ? dbias.data() : nullptr, r.data(),
                    inp.data(), weight.data(), N, C, OC);
    EXPECT_LT(rel_error(dinp, numeric_grad(inp, loss)), kGradTol);
    EXPECT_LT(rel_error(dweight, numeric_grad(weight, loss)), kGradTol);
    if (with_bias) {
      EXPECT_LT(rel_error(dbias, numeric_grad(bias, loss)), kGradTol);
    } else {
      for (double b : dbias) EXPECT_EQ(b, 0.0);  // null dbias: nothing written anywhere
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulGradTest,
                         ::testing::Values(MatmulShape{1, 1, 1}, MatmulShape{5, 7, 3},
                                           MatmulShape{4, 16, 9}, MatmulShape{9, 3, 17}));

TEST(MatmulGradTest, NullDinpStillGivesWeightGradients) {
  const int64_t N = 6, C = 5, OC = 4;
  Vec inp = random_vector(N * C, 11), weight = random_vector(OC * C, 12);
  Vec bias = random_vector(OC, 13), r = random_vector(N * OC, 14);
  Vec out(N * OC);
  auto loss = [&] {
    matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), N, C, OC);
    return dot(out, r);
  };
  Vec dweight(OC * C, 0.0), dbias(OC, 0.0);
  matmul_backward<double>(nullptr, dweight.data(), dbias.data(), r.data(), inp.data(),
                          weight.data(), N, C, OC);
  EXPECT_LT(rel_error(dweight, numeric_grad(weight, loss)), kGradTol);
  EXPECT_LT(rel_error(dbias, numeric_grad(bias, loss)), kGradTol);
}

TEST(MatmulGradTest, BackwardAccumulates) {
  const int64_t N = 7, C = 6, OC = 5;
  Vec inp = random_vector(N * C, 21), weight = random_vector(OC * C, 22);
  Vec dout = random_vector(N * OC, 23);
  Vec dinp1(N * C, 0.0), dw1(OC * C, 0.0), db1(OC, 0.0);
  matmul_backward(dinp1.data(), dw1.data(), db1.data(), dout.data(), inp.data(), weight.data(), N,
                  C, OC);
  Vec dinp2(N * C, 0.0), dw2(OC * C, 0.0), db2(OC, 0.0);
  for (int i = 0; i < 2; ++i) {
    matmul_backward(dinp2.data(), dw2.data(), db2.data(), dout.data(), inp.data(), weight.data(),
                    N, C, OC);
  }
  EXPECT_LT(rel_error(dinp2, times(dinp1, 2)), 1e-12);
  EXPECT_LT(rel_error(dw2, times(dw1, 2)), 1e-12);
  EXPECT_LT(rel_error(db2, times(db1, 2)), 1e-12);
}

// ---------------------------------------------------------------------------------------
// layernorm

struct LayernormShape {
  int64_t N, C;
};
void PrintTo(const LayernormShape& s, std::ostream* os) {
  *os << fmt::format("N={} C={}", s.N, s.C);
}

class LayernormGradTest : public ::testing::TestWithParam<LayernormShape> {};

TEST_P(LayernormGradTest, MatchesFiniteDifferences) {
  const auto [N, C] = GetParam();
  Vec inp = random_vector(N * C, 31, -2.0, 2.0);
  Vec weight = random_vector(C, 32, 0.5, 1.5), bias = random_vector(C, 33);
  Vec r = random_vector(N * C, 34);
  Vec out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(),
                      bias.data(), N, C);
    return dot(out, r);
  };
  loss();  // mean and rstd of the unperturbed input, for backward
  Vec dinp(N * C, 0.0), dweight(C, 0.0), dbias(C, 0.0);
  layernorm_backward(dinp.data(), dweight.data(), dbias.data(), r.data(), inp.data(),
                     weight.data(), mean.data(), rstd.data(), N, C);
  EXPECT_LT(rel_error(dinp, numeric_grad(inp, loss)), kGradTol);
  EXPECT_LT(rel_error(dweight, numeric_grad(weight, loss)), kGradTol);
  EXPECT_LT(rel_error(dbias, numeric_grad(bias, loss)), kGradTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayernormGradTest,
                         ::testing::Values(LayernormShape{3, 1}, LayernormShape{4, 3},
                                           LayernormShape{2, 8}, LayernormShape{3, 17},
                                           LayernormShape{1, 33}));

TEST(LayernormGradTest, BackwardAccumulates) {
  const int64_t N = 5, C = 19;
  Vec inp = random_vector(N * C, 41), weight = random_vector(C, 42), bias = random_vector(C, 43);
  Vec dout = random_vector(N * C, 44);
  Vec out(N * C), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(),
                    N, C);
  Vec dinp1(N * C, 0.0), dw1(C, 0.0), db1(C, 0.0);
  layernorm_backward(dinp1.data(), dw1.data(), db1.data(), dout.data(), inp.data(), weight.data(),
                     mean.data(), rstd.data(), N, C);
  Vec dinp2(N * C, 0.0), dw2(C, 0.0), db2(C, 0.0);
  for (int i = 0; i < 2; ++i) {
    layernorm_backward(dinp2.data(), dw2.data(), db2.data(), dout.data(), inp.data(),
                       weight.data(), mean.data(), rstd.data(), N, C);
  }
  EXPECT_LT(rel_error(dinp2, times(dinp1, 2)), 1e-12);
  EXPECT_LT(rel_error(dw2, times(dw1, 2)), 1e-12);
  EXPECT_LT(rel_error(db2, times(db1, 2)), 1e-12);
}

// ---------------------------------------------------------------------------------------
// gelu and residual

TEST(GeluGradTest, MatchesFiniteDifferences) {
  for (int64_t n : {1, 7, 37}) {
    SCOPED_TRACE(n);
    Vec inp = random_vector(n, 51, -4.0, 4.0), r = random_vector(n, 52);
    Vec out(n);
    auto loss = [&] {
      gelu_forward(out.data(), inp.data(), n);
      return dot(out, r);
    };
    Vec dinp(n, 0.0);
    gelu_backward(dinp.data(), inp.data(), r.data(), n);
    EXPECT_LT(rel_error(dinp, numeric_grad(inp, loss)), kGradTol);
  }
}

TEST(GeluGradTest, BackwardAccumulates) {
  const int64_t n = 29;
  Vec inp = random_vector(n, 53, -3.0, 3.0), dout = random_vector(n, 54);
  Vec once(n, 0.0), twice(n, 0.0);
  gelu_backward(once.data(), inp.data(), dout.data(), n);
  gelu_backward(twice.data(), inp.data(), dout.data(), n);
  gelu_backward(twice.data(), inp.data(), dout.data(), n);
  EXPECT_LT(rel_error(twice, times(once, 2)), 1e-12);
}

TEST(ResidualGradTest, MatchesFiniteDifferences) {
  const int64_t n = 19;
  Vec a = random_vector(n, 61), b = random_vector(n, 62), r = random_vector(n, 63);
  Vec out(n);
  auto loss = [&] {
    residual_forward(out.data(), a.data(), b.data(), n);
    return dot(out, r);
  };
  Vec da(n, 0.0), db(n, 0.0);
  residual_backward(da.data(), db.data(), r.data(), n);
  EXPECT_LT(rel_error(da, numeric_grad(a, loss)), kGradTol);
  EXPECT_LT(rel_error(db, numeric_grad(b, loss)), kGradTol);
}

TEST(ResidualGradTest, BackwardAccumulates) {
  const int64_t n = 21;
  Vec dout = random_vector(n, 64);
  Vec da = random_vector(n, 65), db = random_vector(n, 66);  // already holding a branch's grad
  const Vec da0 = da, db0 = db;
  residual_backward(da.data(), db.data(), dout.data(), n);
  residual_backward(da.data(), db.data(), dout.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(da[i], da0[i] + 2 * dout[i], 1e-15) << i;
    EXPECT_NEAR(db[i], db0[i] + 2 * dout[i], 1e-15) << i;
  }
}

// ---------------------------------------------------------------------------------------
// attention

struct AttentionShape {
  int B, T, C, NH;
  int64_t stride;  // finite-difference every stride-th qkv element (1: all of them)
};
void PrintTo(const AttentionShape& s, std::ostream* os) {
  *os << fmt::format("B={} T={} C={} NH={} stride={}", s.B, s.T, s.C, s.NH, s.stride);
}

class AttentionGradTest : public ::testing::TestWithParam<AttentionShape> {};

TEST_P(AttentionGradTest, MatchesFiniteDifferences) {
  const auto [B, T, C, NH, stride] = GetParam();
  const int64_t n_qkv = int64_t{B} * T * 3 * C, n_out = int64_t{B} * T * C;
  Vec qkv = random_vector(n_qkv, 71, -1.5, 1.5), r = random_vector(n_out, 72);
  Vec out(n_out), lse(int64_t{B} * NH * T);
  auto loss = [&] {
    attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
    return dot(out, r);
  };
  loss();  // out and lse of the unperturbed input, for backward
  Vec dqkv(n_qkv, 0.0);
  attention_backward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  // stride is coprime with 3C in every shape below, so the sample covers q, k and v columns
  // of early and late positions (early keys feed the later query blocks).
  const std::vector<int64_t> idx = stride == 1 ? std::vector<int64_t>{}
                                               : sample_indices(n_qkv, stride, 3 * C);
  const Vec numeric = numeric_grad(qkv, loss, idx);
  EXPECT_LT(rel_error(gather(dqkv, idx), gather(numeric, idx)), kGradTol);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionGradTest,
    ::testing::Values(AttentionShape{1, 1, 4, 2, 1},    // T = 1: the softmax is all ones
                      AttentionShape{2, 7, 6, 3, 1},    // odd T, NH = 3, B = 2
                      AttentionShape{1, 33, 4, 1, 1},   // NH = 1
                      AttentionShape{2, 5, 3, 1, 1},    // odd head size
                      AttentionShape{1, 130, 4, 2, 7},  // crosses the query blocks
                      AttentionShape{1, 200, 6, 3, 17}),
    [](const auto& info) {
      const AttentionShape& s = info.param;
      return fmt::format("B{}_T{}_C{}_NH{}", s.B, s.T, s.C, s.NH);
    });

TEST(AttentionGradTest, BackwardAccumulates) {
  const int B = 2, T = 9, C = 6, NH = 2;
  Vec qkv = random_vector(int64_t{B} * T * 3 * C, 73), dout = random_vector(int64_t{B} * T * C, 74);
  Vec out(int64_t{B} * T * C), lse(int64_t{B} * NH * T);
  attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  Vec once(qkv.size(), 0.0), twice(qkv.size(), 0.0);
  attention_backward(once.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  for (int i = 0; i < 2; ++i) {
    attention_backward(twice.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                       NH);
  }
  EXPECT_LT(rel_error(twice, times(once, 2)), 1e-12);
}

// ---------------------------------------------------------------------------------------
// embedding

TEST(EmbeddingGradTest, MatchesFiniteDifferencesWithRepeatedTokens) {
  const int B = 2, T = 5, C = 3, V = 6;
  // Token 1 appears five times (across both sequences), 3 three times, 5 never.
  const std::vector<int32_t> tokens = {1, 3, 1, 1, 0, 2, 1, 3, 3, 1};
  Vec wte = random_vector(V * C, 81), wpe = random_vector(T * C, 82);
  Vec r = random_vector(int64_t{B} * T * C, 83);
  Vec out(int64_t{B} * T * C);
  auto loss = [&] {
    embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return dot(out, r);
  };
  Vec dwte(V * C, 0.0), dwpe(T * C, 0.0);
  embedding_backward(dwte.data(), dwpe.data(), r.data(), tokens.data(), B, T, C);
  EXPECT_LT(rel_error(dwte, numeric_grad(wte, loss)), kGradTol);
  EXPECT_LT(rel_error(dwpe, numeric_grad(wpe, loss)), kGradTol);
  for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[5 * C + c], 0.0) << "unused token 5";
}

TEST(EmbeddingGradTest, BackwardAccumulates) {
  const int B = 3, T = 4, C = 5, V = 3;
  const std::vector<int32_t> tokens = random_tokens(B * T, V, 84);
  Vec dout = random_vector(int64_t{B} * T * C, 85);
  Vec dwte1(V * C, 0.0), dwpe1(T * C, 0.0), dwte2(V * C, 0.0), dwpe2(T * C, 0.0);
  embedding_backward(dwte1.data(), dwpe1.data(), dout.data(), tokens.data(), B, T, C);
  for (int i = 0; i < 2; ++i) {
    embedding_backward(dwte2.data(), dwpe2.data(), dout.data(), tokens.data(), B, T, C);
  }
  EXPECT_LT(rel_error(dwte2, times(dwte1, 2)), 1e-12);
  EXPECT_LT(rel_error(dwpe2, times(dwpe1, 2)), 1e-12);
}

// ---------------------------------------------------------------------------------------
// fused lm head + cross-entropy

struct HeadShape {
  int64_t N, C, V;
  int64_t x_stride = 1;  // finite-difference every x_stride-th element of x (1: all)
};
void PrintTo(const HeadShape& s, std::ostream* os) {
  *os << fmt::format("N={} C={} V={} x_stride={}", s.N, s.C, s.V, s.x_stride);
}

class LmHeadGradTest : public ::testing::TestWithParam<HeadShape> {};

// The naive loss: logits = x @ wte^T, loss_n = logsumexp(logits_n) - logits_n[target_n].
Vec naive_head_losses(const Vec& x, const Vec& wte, const std::vector<int32_t>& targets,
                      int64_t N, int64_t C, int64_t V) {
  Vec losses(N), logits(V);
  for (int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += x[n * C + c] * wte[v * C + c];
      logits[v] = s;
      mx = std::max(mx, s);
    }
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[v] - mx);
    losses[n] = mx + std::log(sum) - logits[targets[n]];
  }
  return losses;
}

TEST_P(LmHeadGradTest, LossAndGradientsMatchReferenceAndFiniteDifferences) {
  const auto [N, C, V, x_stride] = GetParam();
  Vec x = random_vector(N * C, 91, -2.0, 2.0), wte = random_vector(V * C, 92, -2.0, 2.0);
  const std::vector<int32_t> targets = random_tokens(N, static_cast<int32_t>(V), 93);
  Vec scratch(kHeadChunkRows * V);

  // Forward only: the loss sum and per-row losses against the naive loop.
  Vec losses(N, -1.0);
  const double loss_sum = lm_head_cross_entropy<double>(
      nullptr, nullptr, losses.data(), x.data(), wte.data(), targets.data(), N, C, V, 1.0,
      scratch.data());
  const Vec want = naive_head_losses(x, wte, targets, N, C, V);
  EXPECT_LT(rel_error(losses, want), 1e-12);
  double want_sum = 0.0;
  for (double l : want) want_sum += l;
  EXPECT_NEAR(loss_sum, want_sum, 1e-12 * std::max(1.0, std::abs(want_sum)));

  // Forward + backward: same loss, gradients of the summed loss.
  Vec dx(N * C, 0.0), dwte(V * C, 0.0), losses2(N, -1.0);
  const double loss_sum2 =
      lm_head_cross_entropy(dx.data(), dwte.data(), losses2.data(), x.data(), wte.data(),
                            targets.data(), N, C, V, 1.0, scratch.data());
  EXPECT_DOUBLE_EQ(loss_sum2, loss_sum);
  EXPECT_LT(rel_error(losses2, want), 1e-12);

  auto loss = [&] {
    return lm_head_cross_entropy<double>(nullptr, nullptr, nullptr, x.data(), wte.data(),
                                         targets.data(), N, C, V, 1.0, scratch.data());
  };
  // x_stride is coprime with C, so a sample reaches every column and every chunk.
  const std::vector<int64_t> idx =
      x_stride == 1 ? std::vector<int64_t>{} : sample_indices(N * C, x_stride, 2 * C);
  EXPECT_LT(rel_error(gather(dx, idx), gather(numeric_grad(x, loss, idx), idx)), kGradTol);
  EXPECT_LT(rel_error(dwte, numeric_grad(wte, loss)), kGradTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LmHeadGradTest,
                         ::testing::Values(HeadShape{1, 2, 3}, HeadShape{5, 4, 7},
                                           HeadShape{kHeadChunkRows, 2, 5},  // exactly one chunk
                                           // three chunks, the last partial
                                           HeadShape{2 * kHeadChunkRows + 44, 3, 37, 7}),
                         [](const auto& info) {
                           const HeadShape& s = info.param;
                           return fmt::format("N{}_C{}_V{}", s.N, s.C, s.V);
                         });

TEST(LmHeadGradTest, GradScaleScalesGradientsNotLoss) {
  const int64_t N = 150, C = 4, V = 11;
  Vec x = random_vector(N * C, 94), wte = random_vector(V * C, 95);
  const std::vector<int32_t> targets = random_tokens(N, V, 96);
  Vec scratch(kHeadChunkRows * V);
  Vec dx1(N * C, 0.0), dwte1(V * C, 0.0), dx2(N * C, 0.0), dwte2(V * C, 0.0);
  const double l1 = lm_head_cross_entropy<double>(dx1.data(), dwte1.data(), nullptr, x.data(),
                                          wte.data(), targets.data(), N, C, V, 1.0,
                                          scratch.data());
  const double l2 = lm_head_cross_entropy<double>(dx2.data(), dwte2.data(), nullptr, x.data(),
                                          wte.data(), targets.data(), N, C, V, 1.0 / N,
                                          scratch.data());
  EXPECT_DOUBLE_EQ(l1, l2);
  EXPECT_LT(rel_error(dx2, times(dx1, 1.0 / N)), 1e-12);
  EXPECT_LT(rel_error(dwte2, times(dwte1, 1.0 / N)), 1e-12);
  // The scaled gradients are not trivially zero.
  EXPECT_GT(std::abs(dx2[0]) + std::abs(dwte2[0]), 0.0);
}

TEST(LmHeadGradTest, BackwardAccumulates) {
  const int64_t N = kHeadChunkRows + 12, C = 3, V = 9;  // two chunks
  Vec x = random_vector(N * C, 97), wte = random_vector(V * C, 98);
  const std::vector<int32_t> targets = random_tokens(N, V, 99);
  Vec scratch(kHeadChunkRows * V);
  Vec dx1(N * C, 0.0), dwte1(V * C, 0.0), dx2(N * C, 0.0), dwte2(V * C, 0.0);
  lm_head_cross_entropy<double>(dx1.data(), dwte1.data(), nullptr, x.data(), wte.data(), targets.data(),
                        N, C, V, 1.0, scratch.data());
  for (int i = 0; i < 2; ++i) {
    lm_head_cross_entropy<double>(dx2.data(), dwte2.data(), nullptr, x.data(), wte.data(),
                          targets.data(), N, C, V, 1.0, scratch.data());
  }
  EXPECT_LT(rel_error(dx2, times(dx1, 2)), 1e-12);
  EXPECT_LT(rel_error(dwte2, times(dwte1, 2)), 1e-12);
}

}  // namespace
}  // namespace tessera::kernels::cpu
