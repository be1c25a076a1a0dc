// f32 -> bf16 rounding on 8 lanes (AVX2) and 16 lanes (AVX-512 F) with integer operations,
// shared by the conversions (convert.cc) and the fused bf16 AdamW (adam.cc): round to
// nearest even, a NaN stays a NaN with its sign (quiet bit set), overflow goes to infinity,
// as half.h's f32_to_bf16. Include after <immintrin.h>, on x86 only.
#pragma once

namespace tessera::kernels::cpu {

// Return the bf16 values in the low 16 bits of each 32-bit lane.
__attribute__((target("avx2"))) inline __m256i bf16_round_avx2(__m256i u) {
  const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lowest_kept);
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  // Magnitudes fit in 31 bits, so the signed compare is an unsigned one.
  const __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

__attribute__((target("avx512f"))) inline __m512i bf16_round_avx512(__m512i u) {
  const __m512i lowest_kept = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lowest_kept);
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __m512i magnitude = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_blend_epi32(is_nan, rounded, quiet_nan);
}

}  // namespace tessera::kernels::cpu
