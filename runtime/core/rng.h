// Small deterministic random numbers: splitmix64 and a counter-based normal draw, so a value
// depends only on (seed, stream, index) and any rank can reproduce any slice.
#pragma once

#include <cmath>
#include <cstdint>

namespace tessera {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in (0, 1): never exactly 0, so log() is safe.
inline double uniform_open01(uint64_t bits) { return ((bits >> 11) + 0.5) * 0x1.0p-53; }

// Standard normal number `index` of stream (seed, stream), by Box-Muller.
inline double normal_at(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint64_t base = splitmix64(seed ^ splitmix64(stream + 0x51ED270B27A9A5ull));
  const double u1 = uniform_open01(splitmix64(base + 2 * index));
  const double u2 = uniform_open01(splitmix64(base + 2 * index + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// A sequential generator for sampling and shuffling.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_++); }
  double uniform() { return uniform_open01(next()); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return next() % n; }

 private:
  uint64_t state_;
};

}  // namespace tessera
