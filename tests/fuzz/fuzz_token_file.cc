// libFuzzer harness: token files in both formats (llm.c's 256-int32 header + uint16 tokens,
// nanoGPT's raw uint16), with the vocabulary check.
//
// Input: byte 0 picks the format (bit 0: 0 llmc, 1 nanogpt), bytes 1-4 are the vocab_size
// (little-endian int32, any value), the rest is the file. Passing: the file opens and every
// token is below vocab_size, or a tessera::Error says why not.
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "runtime/core/error.h"
#include "runtime/engine/token_data.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  // The vocabulary scan is an OpenMP loop; one thread keeps runs deterministic and leaves
  // the other cores to whoever else uses the machine.
  static const bool one_thread = (omp_set_num_threads(1), true);
  (void)one_thread;
  if (size < 5) return 0;
  const auto format = (data[0] & 1) != 0 ? engine::TokenFormat::NanoGpt : engine::TokenFormat::LlmC;
  int32_t vocab_size = 0;
  std::memcpy(&vocab_size, data + 1, 4);
  const std::string& path = fuzz::write_input_file(data + 5, size - 5);
  try {
    engine::TokenFile file(path, vocab_size, format);
    const size_t header = format == engine::TokenFormat::LlmC ? 4 * engine::kTokenHeaderInts : 0;
    TS_FUZZ_EXPECT(file.size() >= 0 && header + 2 * static_cast<size_t>(file.size()) == size - 5,
                   "%lld tokens in a %zu-byte file", static_cast<long long>(file.size()), size - 5);
    for (int64_t i = 0; i < file.size(); ++i) {
      TS_FUZZ_EXPECT(file.tokens()[i] < vocab_size, "token %d at %lld, vocab_size %d",
                     file.tokens()[i], static_cast<long long>(i), vocab_size);
    }
  } catch (const Error&) {
  }
  return 0;
}
