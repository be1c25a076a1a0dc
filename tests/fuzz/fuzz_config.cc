// libFuzzer harness: the JSON training config and its --set overrides, through
// load_train_config (apply_overrides, then parse_train_config) and resolve_batch.
//
// Input: the config's JSON text, optionally followed by a NUL byte and newline-separated
// "key.path=value" overrides (each line one --set argument; an empty line is an empty one).
// Passing: the config loads, or a tessera::Error says why not.
#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/core/error.h"
#include "runtime/engine/config.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  std::vector<std::string> overrides;
  if (nul != std::string_view::npos) overrides = fuzz::split(input.substr(nul + 1), '\n');
  const std::string& path =
      fuzz::write_input_file(data, nul == std::string_view::npos ? size : nul);

  engine::TrainConfig config;
  try {
    config = engine::load_train_config(path, overrides);
  } catch (const Error&) {
    return 0;
  }
  // The trainer resolves the batch triple next; do it for one rank and for several, on
  // copies, and check the arithmetic it promises.
  for (const int world : {1, 3, 64}) {
    engine::TrainConfig c = config;
    try {
      c.resolve_batch(world);
    } catch (const Error&) {
      continue;
    }
    TS_FUZZ_EXPECT(c.micro_batch_size >= 1 && c.gradient_accumulation_steps >= 1,
                   "micro %d accumulation %d", c.micro_batch_size, c.gradient_accumulation_steps);
    TS_FUZZ_EXPECT(
        c.train_batch_size == int64_t{c.micro_batch_size} * c.gradient_accumulation_steps * world,
        "train_batch_size %lld", static_cast<long long>(c.train_batch_size));
    // A train_batch_size the user gave is never changed, only checked or divided.
    TS_FUZZ_EXPECT(config.train_batch_size <= 0 || c.train_batch_size == config.train_batch_size,
                   "given %lld, resolved %lld", static_cast<long long>(config.train_batch_size),
                   static_cast<long long>(c.train_batch_size));
  }
  return 0;
}
