// cpu_convert.h on every path this CPU runs, bit for bit against the scalar reference in
// runtime/core/half.h: all 65536 16-bit patterns widened, and for narrowing a sweep of
// rounding ties at every exponent, special values and random bit patterns; odd lengths and
// misaligned pointers for the vector tails; the non-finite scan with one inf or nan at every
// position of short arrays and at chosen positions of long, threaded ones.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/kernels/cpu_convert.h"

namespace tessera::kernels::cpu {
namespace {

class ConvertTest : public ::testing::TestWithParam<ConvertPath> {
 protected:
  void SetUp() override {
    if (!convert_path_supported(GetParam()))
      GTEST_SKIP() << convert_path_name(GetParam()) << " is not supported by this CPU";
  }
  ConvertPath path() const { return GetParam(); }
};

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

std::vector<uint16_t> all_16bit_patterns() {
  std::vector<uint16_t> v(65536);
  for (uint32_t i = 0; i < 65536; ++i) v[i] = static_cast<uint16_t>(i);
  return v;
}

// Inputs that stress narrowing: for every 16-bit pattern h, its value as bf16 and as f16
// widened to f32, the exact half-way points above them (the ties) and one ulp either side;
// specials; and uniformly random bit patterns (which cover NaN payloads and subnormals).
std::vector<float> narrowing_inputs() {
  std::vector<float> v;
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t as_bf16 = h << 16;
    for (uint32_t delta : {0u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) v.push_back(from_bits(as_bf16 + delta));
    const uint32_t as_f16 = bits(tessera::f16_to_f32(static_cast<uint16_t>(h)));
    // 13 mantissa bits are dropped for normal halves; the tie is bit 12.
    for (uint32_t delta : {0u, 0xfffu, 0x1000u, 0x1001u, 0x1fffu}) v.push_back(from_bits(as_f16 + delta));
  }
  const float specials[] = {
      0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
      std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
      from_bits(0x7f800001u),  // signalling NaN, smallest payload
      from_bits(0xffbfffffu),  // negative signalling NaN, largest payload
      from_bits(0x00000001u),  // smallest f32 subnormal
      from_bits(0x807fffffu),  // largest negative f32 subnormal
      from_bits(0x00400000u), std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
      -std::numeric_limits<float>::max(),
      65504.0f, 65519.996f, 65520.0f, -65520.0f, 1e6f,  // f16: largest, just below tie, tie -> inf
      0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f, 0x1.8p-24f, 0x1p-14f, 0x1.ff8p-15f,  // f16 subnormals
      1.0f + 0x1p-8f, 1.0f + 0x1.8p-7f,    // bf16 ties: to even below, to even above
      1.0f + 0x1p-11f, 1.0f + 0x1.8p-10f,  // f16 ties likewise
  };
  v.insert(v.end(), std::begin(specials), std::end(specials));
  std::mt19937 rng(1234);
  for (int i = 0; i < 1 << 20; ++i) v.push_back(from_bits(static_cast<uint32_t>(rng())));
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  for (int i = 0; i < 1 << 18; ++i) v.push_back(normal(rng));
  return v;
}

// Element i differs: report the input bits, both outputs, and stop after a few.
template <typename In, typename Out>
void expect_bitwise_equal(const std::vector<In>& input, const std::vector<Out>& got,
                          const std::vector<Out>& want) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size() && reported < 10; ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(Out)) != 0) {
      ADD_FAILURE() << "element " << i << " input bits 0x" << std::hex
                    << std::bit_cast<std::conditional_t<sizeof(In) == 4, uint32_t, uint16_t>>(input[i])
                    << ": got 0x"
                    << std::bit_cast<std::conditional_t<sizeof(Out) == 4, uint32_t, uint16_t>>(got[i])
                    << ", want 0x"
                    << std::bit_cast<std::conditional_t<sizeof(Out) == 4, uint32_t, uint16_t>>(want[i]);
      ++reported;
    }
  }
}

TEST_P(ConvertTest, Bf16ToF32AllPatterns) {
  const auto input = all_16bit_patterns();
  std::vector<float> got(input.size()), want(input.size());
  bf16_to_f32(input.data(), got.data(), static_cast<int64_t>(input.size()), path());
  for (size_t i = 0; i < input.size(); ++i) want[i] = tessera::bf16_to_f32(input[i]);
  expect_bitwise_equal(input, got, want);
}

// F16C (vcvtph2ps) quiets a signalling NaN, as IEEE 754 asks of a conversion; half.h keeps
// the payload as it is. A NaN either way; the expectation takes the hardware's bit.
bool is_signalling_f16_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0 && (h & 0x0200u) == 0;
}
float f16_to_f32_expected(uint16_t h, ConvertPath path) {
  const float reference = tessera::f16_to_f32(h);
  if (path == ConvertPath::Scalar || !is_signalling_f16_nan(h)) return reference;
  return from_bits(bits(reference) | 0x00400000u);
}

TEST_P(ConvertTest, F16ToF32AllPatterns) {
  const auto input = all_16bit_patterns();
  std::vector<float> got(input.size()), want(input.size());
  f16_to_f32(input.data(), got.data(), static_cast<int64_t>(input.size()), path());
  for (size_t i = 0; i < input.size(); ++i) want[i] = f16_to_f32_expected(input[i], path());
  expect_bitwise_equal(input, got, want);
}

TEST_P(ConvertTest, F32ToBf16MatchesReference) {
  const auto input = narrowing_inputs();
  std::vector<uint16_t> got(input.size()), want(input.size());
  f32_to_bf16(input.data(), got.data(), static_cast<int64_t>(input.size()), path());
  for (size_t i = 0; i < input.size(); ++i) want[i] = tessera::f32_to_bf16(input[i]);
  expect_bitwise_equal(input, got, want);
  for (size_t i = 0; i < input.size(); ++i) {
    if (std::isnan(input[i])) {
      ASSERT_TRUE(std::isnan(tessera::bf16_to_f32(got[i]))) << i;
    }
  }
}

TEST_P(ConvertTest, F32ToF16MatchesReference) {
  const auto input = narrowing_inputs();
  std::vector<uint16_t> got(input.size()), want(input.size());
  f32_to_f16(input.data(), got.data(), static_cast<int64_t>(input.size()), path());
  for (size_t i = 0; i < input.size(); ++i) want[i] = tessera::f32_to_f16(input[i]);
  expect_bitwise_equal(input, got, want);
  for (size_t i = 0; i < input.size(); ++i) {
    if (std::isnan(input[i])) {
      ASSERT_TRUE(std::isnan(tessera::f16_to_f32(got[i]))) << i;
    }
  }
}

// The reference itself on the cases the kernels are measured against, so a bug shared by
// half.h and the hardware cannot hide.
TEST(ConvertReferenceTest, KnownRoundings) {
  EXPECT_EQ(tessera::f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     // tie, even is below
  EXPECT_EQ(tessera::f32_to_bf16(1.0f + 0x1.8p-7f), 0x3f82);   // tie, even is above
  EXPECT_EQ(tessera::f32_to_bf16(1.0f + 0x1.8p-8f), 0x3f81);   // above the tie: up
  EXPECT_EQ(tessera::f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(tessera::f32_to_f16(1.0f + 0x1.8p-10f), 0x3c02);
  EXPECT_EQ(tessera::f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflow: inf
  EXPECT_EQ(tessera::f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(tessera::f32_to_f16(65520.0f), 0x7c00);            // tie with 2^16: inf
  EXPECT_EQ(tessera::f32_to_f16(0x1p-24f), 0x0001);            // smallest subnormal half
  EXPECT_EQ(tessera::f32_to_f16(0x1p-25f), 0x0000);            // tie, even is zero
  EXPECT_EQ(tessera::f32_to_f16(0x1.8p-24f), 0x0002);          // tie, even is 2
  EXPECT_EQ(tessera::f32_to_f16(-0.0f), 0x8000);
}

// Lengths around every vector width and block size, from misaligned pointers, so each tail
// path runs; the large ones go through the OpenMP split.
TEST_P(ConvertTest, OddLengthsAndMisalignment) {
  std::vector<int64_t> lengths;
  for (int64_t n = 0; n <= 70; ++n) lengths.push_back(n);
  for (int64_t n : {int64_t{1} << 16, (int64_t{1} << 18) + 13, (int64_t{1} << 20) + 31})
    lengths.push_back(n);
  const int64_t max_n = lengths.back();
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  std::vector<float> f32(max_n + 1);
  for (float& x : f32) x = normal(rng);
  std::vector<uint16_t> h16(max_n + 1);
  for (uint16_t& h : h16) h = static_cast<uint16_t>(rng());
  constexpr uint16_t kCanary = 0xdead;
  for (int64_t n : lengths) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const float* src = f32.data() + 1;  // 4-byte aligned, never 64
    const uint16_t* src16 = h16.data() + 1;
    std::vector<uint16_t> out16(n + 1, kCanary);
    std::vector<float> out32(n + 1, -1.0f);

    f32_to_bf16(src, out16.data(), n, path());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out16[i], tessera::f32_to_bf16(src[i])) << i;
    ASSERT_EQ(out16[n], kCanary) << "wrote past the end";

    f32_to_f16(src, out16.data(), n, path());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out16[i], tessera::f32_to_f16(src[i])) << i;
    ASSERT_EQ(out16[n], kCanary) << "wrote past the end";

    bf16_to_f32(src16, out32.data(), n, path());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(bits(out32[i]), bits(tessera::bf16_to_f32(src16[i]))) << i;
    ASSERT_EQ(out32[n], -1.0f) << "wrote past the end";

    f16_to_f32(src16, out32.data(), n, path());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(bits(out32[i]), bits(f16_to_f32_expected(src16[i], path()))) << i;
    ASSERT_EQ(out32[n], -1.0f) << "wrote past the end";
  }
}

// A subnormal f32 anywhere in a vector must not change how its neighbours round (the
// hardware bf16 instruction flushes subnormals; the kernel falls back for that vector).
TEST_P(ConvertTest, F32ToBf16SubnormalAmongNormals) {
  for (int64_t n : {16, 32, 47, 100}) {
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> x(n, 1.0f + 0x1.8p-8f);
      x[at] = from_bits(0x007fffffu);  // rounds up to the smallest normal bf16, 0x0080
      std::vector<uint16_t> out(n);
      f32_to_bf16(x.data(), out.data(), n, path());
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(out[i], tessera::f32_to_bf16(x[i])) << "n " << n << " subnormal at " << at;
    }
  }
}

// Short arrays: one non-finite value at every position, of every kind. Long arrays: at the
// first, last and a few block-boundary positions, on the threaded path.
TEST_P(ConvertTest, HasNonfiniteFindsOneValueAnywhere) {
  const float inf = std::numeric_limits<float>::infinity();
  const float bad_f32[] = {inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                           from_bits(0x7f800001u), from_bits(0xffc00000u)};
  const uint16_t bad_bf16[] = {0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffff};
  const uint16_t bad_f16[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff};
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 70; ++n) lengths.push_back(n);
  lengths.push_back((int64_t{1} << 16) + 17);
  lengths.push_back((int64_t{1} << 20) + 5);  // above the OpenMP threshold

  for (int64_t n : lengths) {
    SCOPED_TRACE("n = " + std::to_string(n));
    // Finite values of every magnitude, including each format's largest finite value,
    // which sits one step below infinity's exponent.
    std::vector<float> f32(n, std::numeric_limits<float>::max());
    std::vector<uint16_t> bf16(n, 0x7f7f), f16(n, 0x7bff);
    for (int64_t i = 0; i < n; i += 3) {
      f32[i] = -0x1p-140f;
      bf16[i] = 0x8001;
      f16[i] = 0x0001;
    }
    ASSERT_FALSE(has_nonfinite(f32.data(), n, path()));
    ASSERT_FALSE(has_nonfinite_bf16(bf16.data(), n, path()));
    ASSERT_FALSE(has_nonfinite_f16(f16.data(), n, path()));
    // 0x7c00 is infinity as an f16 but a finite bf16 (2^121): the formats are not confused.
    std::vector<uint16_t> f16_inf_bits(n, 0x7c00);
    ASSERT_FALSE(has_nonfinite_bf16(f16_inf_bits.data(), n, path()));

    std::vector<int64_t> positions;
    if (n <= 70) {
      for (int64_t i = 0; i < n; ++i) positions.push_back(i);
    } else {
      positions = {0, 1, 65535, 65536, n / 2, n - 17, n - 1};
    }
    for (int64_t at : positions) {
      for (int k = 0; k < 5; ++k) {
        const float saved_f32 = f32[at];
        const uint16_t saved_bf16 = bf16[at], saved_f16 = f16[at];
        f32[at] = bad_f32[k];
        bf16[at] = bad_bf16[k];
        f16[at] = bad_f16[k];
        ASSERT_TRUE(has_nonfinite(f32.data(), n, path())) << "at " << at << " kind " << k;
        ASSERT_TRUE(has_nonfinite_bf16(bf16.data(), n, path())) << "at " << at << " kind " << k;
        ASSERT_TRUE(has_nonfinite_f16(f16.data(), n, path())) << "at " << at << " kind " << k;
        f32[at] = saved_f32;
        bf16[at] = saved_bf16;
        f16[at] = saved_f16;
      }
    }
  }
  EXPECT_FALSE(has_nonfinite(static_cast<const float*>(nullptr), 0, path()));
}

INSTANTIATE_TEST_SUITE_P(EveryPath, ConvertTest,
                         ::testing::Values(ConvertPath::Scalar, ConvertPath::Avx2F16c,
                                           ConvertPath::Avx512, ConvertPath::Avx512Bf16),
                         [](const auto& info) {
                           switch (info.param) {
                             case ConvertPath::Scalar: return std::string("Scalar");
                             case ConvertPath::Avx2F16c: return std::string("Avx2F16c");
                             case ConvertPath::Avx512: return std::string("Avx512");
                             case ConvertPath::Avx512Bf16: return std::string("Avx512Bf16");
                           }
                           return std::string("Unknown");
                         });

TEST(ConvertPathTest, BestPathIsSupportedAndArgumentsAreChecked) {
  EXPECT_TRUE(convert_path_supported(ConvertPath::Scalar));
  EXPECT_TRUE(convert_path_supported(best_convert_path()));
  std::printf("best conversion path on this CPU: %s\n", convert_path_name(best_convert_path()));
  float x = 1.0f;
  uint16_t h = 0;
  EXPECT_THROW(f32_to_bf16(&x, &h, -1), InvalidArgument);
  if (best_convert_path() != ConvertPath::Avx512Bf16) {
    EXPECT_THROW(f32_to_bf16(&x, &h, 1, ConvertPath::Avx512Bf16), InvalidArgument);
  }
}

}  // namespace
}  // namespace tessera::kernels::cpu
