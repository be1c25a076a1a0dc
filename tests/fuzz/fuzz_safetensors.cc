// libFuzzer harness: the safetensors reader (8-byte header length, JSON header, tensor
// table, data-section tiling). Every tensor the reader accepts is decoded in full, so a
// table entry pointing past the mapping shows up as an ASan report instead of passing.
//
// Input: the file's bytes. Passing: the file opens, or a tessera::Error says why not.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "models/safetensors.h"
#include "runtime/core/error.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string& path = fuzz::write_input_file(data, size);
  try {
    models::SafetensorsFile file(path);
    int64_t total = 0;
    std::vector<float> values;
    for (const models::SafetensorsTensor& t : file.tensors()) {
      TS_FUZZ_EXPECT(t.begin >= 0 && t.begin <= t.end && t.numel() >= 0, "tensor %s",
                     t.name.c_str());
      TS_FUZZ_EXPECT(t.nbytes() == t.numel() * static_cast<int64_t>(dtype_size(t.dtype)),
                     "tensor %s spans %lld bytes", t.name.c_str(),
                     static_cast<long long>(t.nbytes()));
      TS_FUZZ_EXPECT(file.find(t.name) == &t, "find(%s)", t.name.c_str());
      values.resize(static_cast<size_t>(t.numel()));
      models::decode_floats(t.data, t.numel(), t.dtype, values.data());
      total += t.nbytes();
    }
    // The tensors tile the data section, which ends at the end of the file.
    TS_FUZZ_EXPECT(total <= static_cast<int64_t>(size), "%lld tensor bytes in a %zu-byte file",
                   static_cast<long long>(total), size);
  } catch (const Error&) {
  }
  return 0;
}
