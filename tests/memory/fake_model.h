// A hand-made model for the memory tests: four layers of odd sizes (37, 50, 23 and 5
// elements, 115 in all), so ZeRO shards cut through layers and parameters and the padding is
// never zero on 2-5 ranks. No GPT, no kernels: the tests walk the layers by hand.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/precision.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"

namespace tessera::memory::test_util {

inline ParamRegistry fake_model() {
  auto spec = [](std::string name, Shape shape, int layer) {
    ParamSpec s;
    s.name = std::move(name);
    s.shape = std::move(shape);
    s.layer = layer;
    s.init = ParamInit::Normal;
    s.init_std = 0.02f;
    return s;
  };
  ParamRegistry r;
  r.add(spec("wte.weight", {6, 5}, 0));
  r.add(spec("wpe.weight", {7}, 0));
  r.add(spec("h.0.w", {10, 5}, 1));
  r.add(spec("h.1.w", {23}, 2));
  r.add(spec("ln_f.weight", {5}, 3));
  return r;
}

// Small integers, exact in f32, bf16 and f16 (and their sums and averages over 2 or 4 ranks).
inline float fake_value(int64_t elem, int rank) {
  return static_cast<float>((rank + 1) * (elem % 7 + 1));
}

// n floats from working-dtype values at p.
inline std::vector<float> from_working(DType dtype, const void* p, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  load_working(dtype, p, out.data(), n);
  return out;
}

}  // namespace tessera::memory::test_util
