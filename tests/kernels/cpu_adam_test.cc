// cpu_adam.h on every path this CPU runs, bit for bit against the scalar rule
// (AdamWStep::update; the fused bf16 update against widening, the rule and rounding in turn),
// on lengths that leave vector tails and cross the threaded block size,
// and on values where IEEE arithmetic has corners (zero, huge, subnormal, NaN). A path this
// CPU lacks is skipped with its name.
#include "runtime/kernels/cpu_adam.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/kernels/cpu/shared_steps.h"
#include "tests/kernels/grad_check.h"

namespace tessera::kernels::cpu {
namespace {

using testing::random_vector;

struct State {
  std::vector<float> p, g, m, v;
};

State random_state(int64_t n, uint64_t seed) {
  return {random_vector<float>(n, seed), random_vector<float>(n, seed + 1, -0.05, 0.05),
          random_vector<float>(n, seed + 2, -0.01, 0.01),
          random_vector<float>(n, seed + 3, 0.0, 1e-4)};
}

AdamWParams busy_params(int64_t step) {
  AdamWParams hp;  // every term of the rule non-trivial
  hp.lr = 6e-4f;
  hp.weight_decay = 0.1f;
  hp.step = step;
  hp.grad_scale = 0.37f;
  hp.l2 = 0.01f;
  return hp;
}

void reference_update(State& s, const AdamWParams& hp) {
  const AdamWStep<float> step(hp);
  for (size_t i = 0; i < s.p.size(); ++i) step.update(s.p[i], s.g[i], s.m[i], s.v[i]);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void expect_same_bits(const State& got, const State& want) {
  EXPECT_TRUE(same_bits(got.p, want.p)) << "params differ";
  EXPECT_TRUE(same_bits(got.m, want.m)) << "m differs";
  EXPECT_TRUE(same_bits(got.v, want.v)) << "v differs";
}

class AdamPathTest : public ::testing::TestWithParam<AdamPath> {
 protected:
  void SetUp() override {
    if (!adam_path_supported(GetParam()))
      GTEST_SKIP() << adam_path_name(GetParam()) << " is not supported by this CPU";
  }
  void run(State& s, const AdamWParams& hp) const {
    adamw_f32(s.p.data(), s.g.data(), s.m.data(), s.v.data(), int64_t(s.p.size()), hp, GetParam());
  }
};

// Tails of every vector width, and lengths past the threaded block size (64 Ki) with a
// partial last block.
TEST_P(AdamPathTest, MatchesTheScalarRuleBitForBit) {
  for (int64_t n : std::vector<int64_t>{0, 1, 7, 8, 9, 15, 16, 17, 31, 1003, (3 << 16) + 5}) {
    SCOPED_TRACE(n);
    State got = random_state(n, 300 + n), want = got;
    for (int64_t step : {1, 2, 1000}) {
      run(got, busy_params(step));
      reference_update(want, busy_params(step));
    }
    expect_same_bits(got, want);
  }
}

// Zero gradients and moments (0/eps), gradients whose square overflows (v = inf, so the
// update is 0 or NaN), subnormal moments, and a NaN gradient, which must stay a NaN in
// the same places. NaN payloads may differ between paths (operand order), so NaNs compare as
// NaNs and everything else bit for bit.
TEST_P(AdamPathTest, MatchesTheScalarRuleOnIeeeCorners) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float tiny = std::numeric_limits<float>::denorm_min();
  const std::vector<float> corners = {0.0f, -0.0f, 1e30f, -1e30f, tiny, -tiny, 1e-40f, inf, nan};
  const int64_t n = 3 * int64_t(corners.size()) * int64_t(corners.size());
  State got = random_state(n, 400);
  for (int64_t i = 0; i < n; ++i) {  // every pair of corners in g and m, with v >= 0
    got.g[i] = corners[i % corners.size()];
    got.m[i] = corners[(i / corners.size()) % corners.size()];
    got.v[i] = std::fabs(corners[(i / 7) % corners.size()]);
  }
  State want = got;
  run(got, busy_params(3));
  reference_update(want, busy_params(3));
  for (int64_t i = 0; i < n; ++i) {
    const auto check = [&](float a, float b, const char* what) {
      if (std::isnan(b)) {
        EXPECT_TRUE(std::isnan(a)) << what << " at " << i;
      } else {
        EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0)
            << what << " at " << i << ": " << a << " vs " << b;
      }
    };
    check(got.p[i], want.p[i], "param");
    check(got.m[i], want.m[i], "m");
    check(got.v[i], want.v[i], "v");
  }
}

// Bias correction comes from AdamWParams::step on each call, never from state kept between
// calls, so a resumed run's step 5 is the uninterrupted run's step 5.
TEST_P(AdamPathTest, StepFiveIsTheSameAfterAResume) {
  const int64_t n = 4099;
  State straight = random_state(n, 500);
  for (int64_t step = 1; step <= 5; ++step) run(straight, busy_params(step));

  State first = random_state(n, 500);
  for (int64_t step = 1; step <= 4; ++step) run(first, busy_params(step));
  State resumed = first;  // as loaded from a checkpoint: the states, and the step count
  adamw_f32(resumed.p.data(), resumed.g.data(), resumed.m.data(), resumed.v.data(), n,
            busy_params(1), GetParam());  // a wrong step count gives other numbers...
  EXPECT_FALSE(same_bits(resumed.p, straight.p));
  resumed = first;
  run(resumed, busy_params(5));  // ...the recorded one the same
  expect_same_bits(resumed, straight);
}

INSTANTIATE_TEST_SUITE_P(Paths, AdamPathTest,
                         ::testing::Values(AdamPath::Scalar, AdamPath::Avx2, AdamPath::Avx512),
                         [](const auto& info) { return std::string(adam_path_name(info.param)); });

// adamw_update<float>, what the optimizers call, is adamw_f32 on the best path.
TEST(AdamDispatchTest, AdamwUpdateTakesTheBestPath) {
  State a = random_state(70001, 600), b = a;
  adamw_update(a.p.data(), a.g.data(), a.m.data(), a.v.data(), int64_t(a.p.size()), busy_params(2));
  reference_update(b, busy_params(2));
  expect_same_bits(a, b);
  EXPECT_TRUE(adam_path_supported(AdamPath::Scalar));
  EXPECT_TRUE(adam_path_supported(best_adam_path()));
}

TEST(AdamDispatchTest, AnUnsupportedPathIsAnErrorNotAnIllegalInstruction) {
  if (best_adam_path() == AdamPath::Avx512) GTEST_SKIP() << "every path runs on this CPU";
  State s = random_state(16, 700);
  try {
    adamw_f32(s.p.data(), s.g.data(), s.m.data(), s.v.data(), 16, busy_params(1), AdamPath::Avx512);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("cannot run the avx512 path"), std::string::npos)
        << e.what();
  }
}

// The fused bf16 update (adamw_bf16) against widening, the scalar rule and rounding done in
// turn: random values, lengths with tails and past the threaded block, and corners (bf16
// gradients that are NaN, infinite or subnormal; masters that round to ties, overflow to
// infinity on rounding, or are subnormal). NaNs compare as NaNs.
class AdamBf16Test : public ::testing::TestWithParam<AdamPath> {
 protected:
  void SetUp() override {
    if (!adam_path_supported(GetParam()))
      GTEST_SKIP() << adam_path_name(GetParam()) << " is not supported by this CPU";
  }
};

struct Bf16State {
  std::vector<float> master, m, v;
  std::vector<uint16_t> p16, g16;
};

Bf16State bf16_state(int64_t n, uint64_t seed) {
  const State s = random_state(n, seed);
  Bf16State b{s.p, s.m, s.v, std::vector<uint16_t>(n), std::vector<uint16_t>(n)};
  for (int64_t i = 0; i < n; ++i) {
    b.p16[i] = f32_to_bf16(s.p[i]);
    b.g16[i] = f32_to_bf16(s.g[i]);
  }
  return b;
}

void reference_bf16(Bf16State& s, const AdamWParams& hp) {
  const AdamWStep<float> step(hp);
  for (size_t i = 0; i < s.master.size(); ++i) {
    step.update(s.master[i], bf16_to_f32(s.g16[i]), s.m[i], s.v[i]);
    s.p16[i] = f32_to_bf16(s.master[i]);
  }
}

void expect_same(const Bf16State& got, const Bf16State& want) {
  ASSERT_EQ(got.master.size(), want.master.size());
  for (size_t i = 0; i < got.master.size(); ++i) {
    const auto same = [](float a, float b) {
      return std::isnan(b) ? std::isnan(a) : std::memcmp(&a, &b, sizeof a) == 0;
    };
    const auto same16 = [](uint16_t a, uint16_t b) {
      const bool nan_b = (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0;
      return nan_b ? (a & 0x7f80) == 0x7f80 && (a & 0x7f) != 0 : a == b;
    };
    ASSERT_TRUE(same(got.master[i], want.master[i])) << "master at " << i;
    ASSERT_TRUE(same(got.m[i], want.m[i])) << "m at " << i;
    ASSERT_TRUE(same(got.v[i], want.v[i])) << "v at " << i;
    ASSERT_TRUE(same16(got.p16[i], want.p16[i]))
        << "bf16 param at " << i << ": " << got.p16[i] << " vs " << want.p16[i];
  }
}

TEST_P(AdamBf16Test, MatchesWidenUpdateRoundBitForBit) {
  for (int64_t n : std::vector<int64_t>{0, 1, 15, 16, 17, 1003, (3 << 16) + 5}) {
    SCOPED_TRACE(n);
    Bf16State got = bf16_state(n, 800 + n), want = got;
    for (int64_t step : {1, 2, 1000}) {
      adamw_bf16(got.master.data(), got.p16.data(), got.g16.data(), got.m.data(), got.v.data(), n,
                 busy_params(step), GetParam());
      reference_bf16(want, busy_params(step));
    }
    expect_same(got, want);
  }
}

TEST_P(AdamBf16Test, MatchesOnIeeeCorners) {
  const std::vector<uint16_t> grads = {0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x0001,
                                       0x8001, 0x7f7f, 0x3f80};
  const float max = std::numeric_limits<float>::max();
  // A tie (rounds to even), just above a tie, the largest float (rounds to infinity), a
  // subnormal, zero.
  const std::vector<float> masters = {1.00390625f, 1.0039063f, max, -max, 1e-40f, 0.0f, 3.0f};
  const int64_t n = 5 * int64_t(grads.size() * masters.size());
  Bf16State got = bf16_state(n, 900);
  for (int64_t i = 0; i < n; ++i) {
    got.g16[i] = grads[i % grads.size()];
    got.master[i] = masters[(i / grads.size()) % masters.size()];
  }
  AdamWParams hp = busy_params(4);
  hp.lr = 1e-9f;  // so the masters stay near their corners
  Bf16State want = got;
  adamw_bf16(got.master.data(), got.p16.data(), got.g16.data(), got.m.data(), got.v.data(), n, hp,
             GetParam());
  reference_bf16(want, hp);
  expect_same(got, want);
}

INSTANTIATE_TEST_SUITE_P(Paths, AdamBf16Test,
                         ::testing::Values(AdamPath::Scalar, AdamPath::Avx2, AdamPath::Avx512),
                         [](const auto& info) { return std::string(adam_path_name(info.param)); });

}  // namespace
}  // namespace tessera::kernels::cpu
