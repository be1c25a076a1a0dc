// f16 / bf16 conversions against independent references: the compiler's _Float16 and a
// double-precision round-to-nearest-even for bf16.
#include "runtime/core/half.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "parallel/comm/reduce_kernels.h"

namespace tessera::parallel {
namespace {

uint16_t f16_bits(_Float16 h) { return std::bit_cast<uint16_t>(h); }

bool same_value(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) ||
         (std::isnan(a) && std::isnan(b));
}

TEST(Half, F16ToF32IsExactForEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float expected = static_cast<float>(std::bit_cast<_Float16>(static_cast<uint16_t>(h)));
    ASSERT_TRUE(same_value(f16_to_f32(static_cast<uint16_t>(h)), expected)) << std::hex << h;
  }
}

TEST(Half, F32ToF16RoundsToNearestEven) {
  auto check = [](uint32_t bits) {
    const float f = std::bit_cast<float>(bits);
    const uint16_t got = f32_to_f16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(got))) << std::hex << bits;
      return;
    }
    ASSERT_EQ(got, f16_bits(static_cast<_Float16>(f))) << std::hex << bits << " = " << f;
  };
  // A stride through all floats, plus every half-way point and its neighbours in the
  // subnormal, normal and overflow ranges where rounding decides.
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 9973) check(static_cast<uint32_t>(bits));
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double mid = (static_cast<double>(f16_to_f32(h)) + f16_to_f32(h + 1)) / 2;
    const uint32_t m = std::bit_cast<uint32_t>(static_cast<float>(mid));
    for (uint32_t b : {m - 1, m, m + 1}) {
      check(b);
      check(b | 0x80000000u);
    }
  }
  for (float f : {65504.0f, 65519.99f, 65520.0f, 1e9f, INFINITY, -INFINITY, 5.96e-8f, 2.98e-8f,
                  2.99e-8f, 0.0f, -0.0f})
    check(std::bit_cast<uint32_t>(f));
}

uint16_t bf16_reference(float f) {
  // Candidates are f truncated to bf16 and the next one up in magnitude; pick the nearer,
  // and the one with an even last bit on a tie.
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double d_lo = std::fabs(static_cast<double>(f) - bf16_to_f32(lo));
  // Past the largest finite bf16 the next step is 2^128, which IEEE rounding maps to infinity.
  const double hi_value =
      (hi & 0x7fff) == 0x7f80 ? std::copysign(std::ldexp(1.0, 128), f) : bf16_to_f32(hi);
  const double d_hi = std::fabs(hi_value - static_cast<double>(f));
  if (d_lo < d_hi) return lo;
  if (d_hi < d_lo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(Half, F32ToBf16RoundsToNearestEven) {
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 7919) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(bits));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    if (std::isinf(f)) continue;
    const uint16_t expected = bf16_reference(f);
    ASSERT_EQ(f32_to_bf16(f), expected) << std::hex << bits;
  }
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
}

TEST(Half, BulkConversionsMatchScalar) {
  std::vector<float> values(1037);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = std::ldexp(static_cast<float>(i) * 0.37f - 150.0f, static_cast<int>(i % 40) - 25);
  for (DType dt : {DType::F16, DType::BF16}) {
    std::vector<uint16_t> packed(values.size());
    convert_from_f32(values.data(), packed.data(), values.size(), dt);
    std::vector<float> back(values.size());
    convert_to_f32(packed.data(), back.data(), values.size(), dt);
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t scalar = dt == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
      ASSERT_EQ(packed[i], scalar) << i;
      ASSERT_TRUE(same_value(back[i], dt == DType::F16 ? f16_to_f32(scalar) : bf16_to_f32(scalar)))
          << i;
    }
  }
}

TEST(ReduceKernels, SixteenBitSumsAccumulateInF32) {
  // 2048 + 1 + 1 in f16 step by step is 2048 (each +1 is a tie that rounds to even); in f32
  // then rounded once it is 2050.
  const uint16_t a = f32_to_f16(2048.0f), b = f32_to_f16(1.0f);
  const void* sources[] = {&a, &b, &b};
  uint16_t out = 0;
  reduce_into(&out, sources, 1, DType::F16, ReduceOp::Sum, 3);
  EXPECT_EQ(f16_to_f32(out), 2050.0f);
}

}  // namespace
}  // namespace tessera::parallel
