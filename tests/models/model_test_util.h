// Helpers shared by the model tests.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/rng.h"

namespace tessera::models::test_util {

// n token ids below `vocab`, deterministic in `seed`.
inline std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng.below(vocab));
  return t;
}

}  // namespace tessera::models::test_util
