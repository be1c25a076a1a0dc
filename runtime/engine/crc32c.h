// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum TFRecord framing puts
// around every record of a TensorBoard event file, and the "masked" form it stores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tessera::engine {

// Continues a CRC over more bytes: crc32c_extend(crc32c(a), b) == crc32c(a + b).
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);
// Always the table-driven version (tests compare both paths).
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t size);

inline uint32_t crc32c(const void* data, size_t size) { return crc32c_extend(0, data, size); }
inline uint32_t crc32c(std::string_view bytes) { return crc32c(bytes.data(), bytes.size()); }

// TFRecord stores a rotated-and-offset CRC so that a CRC computed over data which itself
// contains CRCs does not degenerate (see TensorFlow's lib/hash/crc32c.h).
constexpr uint32_t kCrc32cMaskDelta = 0xa282ead8u;
inline uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrc32cMaskDelta; }
inline uint32_t unmask_crc32c(uint32_t masked) {
  const uint32_t rot = masked - kCrc32cMaskDelta;
  return (rot >> 17) | (rot << 15);
}
inline uint32_t masked_crc32c(std::string_view bytes) { return mask_crc32c(crc32c(bytes)); }

}  // namespace tessera::engine
