// The byte-level tokenizer: token id = byte value, vocabulary 256. Lossless for any text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::launch {

inline constexpr int kByteVocab = 256;

inline std::vector<int32_t> encode_bytes(const std::string& text) {
  std::vector<int32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

inline std::string decode_bytes(const std::vector<int32_t>& tokens) {
  std::string out(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) out[i] = static_cast<char>(tokens[i] & 0xff);
  return out;
}

}  // namespace tessera::launch
