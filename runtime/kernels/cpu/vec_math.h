// Element-wise math that the compiler can vectorise: glibc's expf/tanhf are scalar calls
// unless built with -ffast-math, and GELU / softmax call them millions of times a step.
// double keeps the libm versions so gradient checks run at full precision.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tessera::kernels::cpu {

// exp(x) for float: range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for
// e^r, and 2^n put straight into the exponent bits. Relative error ~2e-7 over [-87, 88].
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;  // ln2 split in two for an exact product
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

inline float k_exp(float x) { return fast_exp(x); }
inline double k_exp(double x) { return std::exp(x); }

// tanh through exp: 1 - 2 / (e^{2u} + 1); absolute error ~1e-7, which is what GELU needs.
inline float k_tanh(float u) { return 1.0f - 2.0f / (fast_exp(2.0f * u) + 1.0f); }
inline double k_tanh(double u) { return std::tanh(u); }

}  // namespace tessera::kernels::cpu
