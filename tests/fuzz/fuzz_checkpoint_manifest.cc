// libFuzzer harness: a training checkpoint's manifest.json (and a shard's piece list), through
// manifest_from_json and pieces_from_json.
//
// Passing: the text parses into a manifest that writes back to JSON which parses to the same
// manifest, and whose coverage check (on manifests of at most 2^20 elements) either passes or
// throws; or a tessera::Error says why the text is not a manifest.
#include <cstdint>
#include <string>

#include "runtime/core/error.h"
#include "runtime/engine/checkpoint_format.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    engine::pieces_from_json(text, "fuzz");
  } catch (const Error&) {
  }
  engine::Manifest m;
  try {
    m = engine::manifest_from_json(text, "fuzz");
  } catch (const Error&) {
    return 0;
  }
  const std::string written = engine::manifest_to_json(m);
  engine::Manifest back;
  try {
    back = engine::manifest_from_json(written, "fuzz (written back)");
  } catch (const Error& e) {
    TS_FUZZ_EXPECT(false, "a parsed manifest does not parse once written: %s", e.what());
  }
  TS_FUZZ_EXPECT(engine::manifest_to_json(back) == written, "%s",
                 "the manifest changes on a second round trip");
  int64_t numel = 0;
  for (const engine::SavedTensor& t : m.tensors) numel += shape_numel(t.shape);
  if (numel <= (int64_t{1} << 20)) {
    try {
      engine::check_coverage(m);
    } catch (const Error&) {
    }
  }
  return 0;
}
