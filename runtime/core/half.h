// Scalar f16 / bf16 <-> f32 conversions with IEEE round-to-nearest-even, NaN kept quiet and
// sign preserved. Bit-exact with hardware conversions (F16C, _Float16); the reduction loops in
// parallel/comm/reduce_kernels.cc use the vector forms where the CPU has them and these everywhere else.
#pragma once

#include <bit>
#include <cstdint>

namespace tessera {

inline float bf16_to_f32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t f32_to_bf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  // Adding 0x7fff plus the lowest kept bit rounds half-way cases to the even neighbour; a carry
  // out of the mantissa correctly bumps the exponent (up to infinity).
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) {
    // Inf stays inf; a NaN is returned quiet (bit 22 set), as IEEE conversion and F16C do.
    const uint32_t quiet = mantissa != 0 ? 0x400000u : 0u;
    return std::bit_cast<float>(sign | 0x7f800000u | quiet | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) return std::bit_cast<float>(sign);
    // Subnormal half: every one is a normal float, so shift the leading one into place.
    uint32_t e = 113;  // exponent of 2^-14 in float bias, +1 for the first shift below
    do {
      mantissa <<= 1;
      --e;
    } while ((mantissa & 0x400u) == 0);
    return std::bit_cast<float>(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
  }
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return sign | 0x7e00u | static_cast<uint16_t>((magnitude >> 13) & 0x3ffu);
  // 65520 is half-way between the largest half (65504) and 2^16; ties go to the even side,
  // which is infinity.
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;
  if (magnitude >= 0x38800000u) {  // normal half range, >= 2^-14
    const uint32_t round_bias = 0xfffu + ((magnitude >> 13) & 1u);
    // Re-bias the exponent from 127 to 15 (subtract 112 << 23, modulo 2^32).
    return sign | static_cast<uint16_t>((magnitude + 0xc8000000u + round_bias) >> 13);
  }
  // Subnormal half: the value in units of 2^-24, rounded to nearest even.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t shift = 126 - exponent;  // >= 14 here
  if (shift > 24) return sign;            // below 2^-25: rounds to zero
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  uint32_t q = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (remainder > half || (remainder == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
}

}  // namespace tessera
