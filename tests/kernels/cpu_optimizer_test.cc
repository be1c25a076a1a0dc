// The optimizer-side kernels: sum_squares, scale and adamw_update against numbers derived by
// hand, plus adamw_update against a naive loop on lengths with vectorised tails.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "runtime/kernels/cpu_kernels.h"
#include "tests/kernels/grad_check.h"

namespace tessera::kernels::cpu {
namespace {

using testing::random_vector;

TEST(SumSquaresTest, HandComputed) {
  const std::vector<float> f = {1.0f, 2.0f, 3.0f, -4.0f};
  EXPECT_EQ(sum_squares(f.data(), 4), 30.0);  // 1 + 4 + 9 + 16
  const std::vector<double> d = {0.5, -1.5};
  EXPECT_EQ(sum_squares(d.data(), 2), 2.5);   // 0.25 + 2.25
  EXPECT_EQ(sum_squares(d.data(), 0), 0.0);
}

// 2^24 + 1 is not a float: a float accumulator would stop at 2^24. Sum of 2^24 + 1 ones.
TEST(SumSquaresTest, AccumulatesInDoubleBeyondFloatPrecision) {
  const int64_t n = (int64_t{1} << 24) + 1;
  const std::vector<float> ones(n, 1.0f);
  EXPECT_EQ(sum_squares(ones.data(), n), double(n));
}

TEST(ScaleTest, HandComputed) {
  std::vector<float> f = {1.0f, -2.0f, 0.5f};
  scale(f.data(), 3.0f, 3);
  EXPECT_EQ(f, (std::vector<float>{3.0f, -6.0f, 1.5f}));
  std::vector<double> d = {4.0, -0.25};
  scale(d.data(), 0.5, 2);
  EXPECT_EQ(d, (std::vector<double>{2.0, -0.125}));
  scale(d.data(), 0.0, 1);  // n = 1 touches only the first element
  EXPECT_EQ(d, (std::vector<double>{0.0, -0.125}));
}

// Two AdamW steps on three parameters, lr 0.1, beta1 0.5, beta2 0.75, eps 1e-8, weight decay
// 0.1 (betas chosen so bias correction changes the numbers a lot). The rule:
//   g' = g*grad_scale; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2
//   mhat = m/(1-b1^t); vhat = v/(1-b2^t); p -= lr (mhat/(sqrt(vhat)+eps) + wd p)
// p0 = (1, -2, 0.5), m0 = v0 = 0.
// Step 1, g = (0.2, -0.4, 0), grad_scale 1:
//   m1 = 0.5 g = (0.1, -0.2, 0); v1 = 0.25 g^2 = (0.01, 0.04, 0)
//   mhat = m1/0.5 = (0.2, -0.4, 0); vhat = v1/0.25 = (0.04, 0.16, 0), sqrt = (0.2, 0.4, 0)
//   ratio = (0.2/(0.2+1e-8), -0.4/(0.4+1e-8), 0/1e-8) = (0.99999995, -0.999999975, 0)
//   p1 = p0 - 0.1 (ratio + 0.1 p0) = (1 - 0.109999995, -2 + 0.1199999975, 0.5 - 0.005)
//      = (0.890000005, -1.8800000025, 0.495)   (the third moves by weight decay alone)
// Step 2, g = (0.4, 0.2, -0.6), grad_scale 0.5, so g' = (0.2, 0.1, -0.3):
//   m2 = 0.5 m1 + 0.5 g' = (0.15, -0.05, -0.15)
//   v2 = 0.75 v1 + 0.25 g'^2 = (0.0075+0.01, 0.03+0.0025, 0+0.0225) = (0.0175, 0.0325, 0.0225)
//   mhat = m2/(1-0.25) = (0.2, -0.0666667, -0.2)
//   vhat = v2/(1-0.5625) = (0.04, 0.0742857, 0.0514286), sqrt = (0.2, 0.2725541, 0.2267787)
//   ratio = (0.99999995, -0.2445998, -0.8819171)
//   p2 = p1 - 0.1 (ratio + 0.1 p1)
//      = (0.890000005 - 0.10889999505, -1.8800000025 + 0.0432599790, 0.495 + 0.0832417065)
//      = (0.78110000995, -1.8367400238, 0.5782417065)
template <typename T>
void check_hand_computed_adamw(double tol) {
  std::vector<T> p = {1.0, -2.0, 0.5}, m(3, 0.0), v(3, 0.0);
  AdamWParams hp;
  hp.lr = 0.1f;
  hp.beta1 = 0.5f;
  hp.beta2 = 0.75f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;

  hp.step = 1;
  hp.grad_scale = 1.0f;
  const std::vector<T> g1 = {0.2, -0.4, 0.0};
  adamw_update(p.data(), g1.data(), m.data(), v.data(), 3, hp);
  const double p1[] = {0.890000005, -1.8800000025, 0.495};
  const double m1[] = {0.1, -0.2, 0.0}, v1[] = {0.01, 0.04, 0.0};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p[i], p1[i], tol) << "step 1, param " << i;
    EXPECT_NEAR(m[i], m1[i], tol) << "step 1, m " << i;
    EXPECT_NEAR(v[i], v1[i], tol) << "step 1, v " << i;
  }

  hp.step = 2;
  hp.grad_scale = 0.5f;
  const std::vector<T> g2 = {0.4, 0.2, -0.6};
  adamw_update(p.data(), g2.data(), m.data(), v.data(), 3, hp);
  const double p2[] = {0.78110000995, -1.8367400238, 0.5782417065};
  const double m2[] = {0.15, -0.05, -0.15}, v2[] = {0.0175, 0.0325, 0.0225};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p[i], p2[i], tol) << "step 2, param " << i;
    EXPECT_NEAR(m[i], m2[i], tol) << "step 2, m " << i;
    EXPECT_NEAR(v[i], v2[i], tol) << "step 2, v " << i;
  }
}

// AdamWParams holds floats (0.1f is 0.1 + 1.5e-9), so even in double the result differs from
// the hand values by ~1e-9; 1e-7 in double and 1e-6 in float (a few float roundings of O(1)
// values) still catch any wrong term (the smallest, eps, moves p by 5e-9 only, hence
// eps is checked separately below).
TEST(AdamWTest, HandComputedTwoStepsDouble) { check_hand_computed_adamw<double>(1e-7); }
TEST(AdamWTest, HandComputedTwoStepsFloat) { check_hand_computed_adamw<float>(1e-6); }

// eps matters where sqrt(vhat) is tiny: g = 1e-8 at step 1 gives mhat = 1e-8, sqrt(vhat) =
// 1e-8, so the update is lr * 1e-8 / (1e-8 + 1e-8) = lr / 2 (and lr without eps).
TEST(AdamWTest, EpsIsAddedToTheRootOfVhat) {
  std::vector<double> p = {0.0}, m = {0.0}, v = {0.0};
  const std::vector<double> g = {1e-8};
  AdamWParams hp;
  hp.lr = 0.5f;
  hp.eps = 1e-8f;
  hp.step = 1;
  adamw_update(p.data(), g.data(), m.data(), v.data(), 1, hp);
  EXPECT_NEAR(p[0], -0.25, 1e-7);
}

// The same rule, written as a loop in double, on lengths that leave vectorised tails.
TEST(AdamWTest, MatchesNaiveLoopOnOddLengths) {
  for (int64_t n : {1, 15, 17, 1003}) {
    SCOPED_TRACE(n);
    std::vector<float> p = random_vector<float>(n, 201), m = random_vector<float>(n, 202, -0.1, 0.1);
    std::vector<float> v = random_vector<float>(n, 203, 0.0, 0.01);
    const std::vector<float> g = random_vector<float>(n, 204);
    std::vector<double> pd(p.begin(), p.end()), md(m.begin(), m.end()), vd(v.begin(), v.end());
    AdamWParams hp;
    hp.lr = 1e-3f;
    hp.weight_decay = 0.1f;
    hp.step = 7;
    hp.grad_scale = 0.8f;
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp);
    for (int64_t i = 0; i < n; ++i) {
      const double gs = double(g[i]) * hp.grad_scale;
      md[i] = double(hp.beta1) * md[i] + (1 - double(hp.beta1)) * gs;
      vd[i] = double(hp.beta2) * vd[i] + (1 - double(hp.beta2)) * gs * gs;
      const double mhat = md[i] / (1 - std::pow(double(hp.beta1), hp.step));
      const double vhat = vd[i] / (1 - std::pow(double(hp.beta2), hp.step));
      pd[i] -= double(hp.lr) * (mhat / (std::sqrt(vhat) + hp.eps) + hp.weight_decay * pd[i]);
      ASSERT_NEAR(m[i], md[i], 1e-6) << i;
      ASSERT_NEAR(v[i], vd[i], 1e-7) << i;
      ASSERT_NEAR(p[i], pd[i], 1e-6) << i;
    }
  }
}

}  // namespace
}  // namespace tessera::kernels::cpu
