// Helpers for the kernel tests: deterministic random buffers, central finite differences in
// double, and the error measure every comparison uses.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/core/rng.h"

namespace tessera::kernels::testing {

// n values uniform in [lo, hi), the same for the same seed.
template <typename T = double>
std::vector<T> random_vector(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(lo + (hi - lo) * rng.uniform());
  return v;
}

inline std::vector<int32_t> random_tokens(int64_t n, int32_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(rng.below(vocab));
  return v;
}

// max|a - ref| / max(1, max|ref|): absolute error for small values, relative for large.
template <typename A, typename B>
double rel_error(const std::vector<A>& a, const std::vector<B>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < std::min(a.size(), ref.size()); ++i) {
    const double d = std::abs(double(a[i]) - double(ref[i]));
    // A NaN must fail the comparison, and std::max would drop it.
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    max_ref = std::max(max_ref, std::abs(double(ref[i])));
  }
  return max_diff / std::max(1.0, max_ref);
}

// sum(out * r): the scalar objective whose gradient wrt out is r.
inline double dot(const std::vector<double>& out, const std::vector<double>& r) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
  return s;
}

// Sets the OpenMP team size of this thread's parallel regions for a scope.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedOmpThreads() { omp_set_num_threads(saved_); }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
};

// Central differences of `loss` wrt every element of x (or only those in `indices` when it
// is non-empty, zero elsewhere): (L(x+h) - L(x-h)) / 2h. The truncation error is O(h^2 L''')
// and the rounding error O(eps |L| / h), both ~1e-10 for h = 1e-5 and the O(1) objectives
// used here, far below the 1e-6 tolerance of the checks.
//
// The thousands of forward calls run on one OpenMP thread: on a loaded machine a team's
// barriers cost milliseconds per call, and the threaded forward paths are covered by the
// float reference tests. The analytic gradient being checked still runs threaded.
inline std::vector<double> numeric_grad(std::vector<double>& x,
                                        const std::function<double()>& loss,
                                        const std::vector<int64_t>& indices = {},
                                        double h = 1e-5) {
  ScopedOmpThreads one_thread(1);
  std::vector<double> g(x.size(), 0.0);
  auto one = [&](int64_t i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    g[i] = (plus - minus) / (2 * h);
  };
  if (indices.empty()) {
    for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) one(i);
  } else {
    for (int64_t i : indices) one(i);
  }
  return g;
}

// A deterministic subset of [0, n) for inputs too large to difference every element:
// every stride-th element plus the first and last `edge` ones.
inline std::vector<int64_t> sample_indices(int64_t n, int64_t stride, int64_t edge = 8) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) {
    if (i < edge || i >= n - edge || i % stride == 0) idx.push_back(i);
  }
  return idx;
}

// Keeps only `indices` of v (to compare analytic and numeric gradients on a subset).
inline std::vector<double> gather(const std::vector<double>& v, const std::vector<int64_t>& idx) {
  if (idx.empty()) return v;
  std::vector<double> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(v[i]);
  return out;
}

// Tolerance of the double-precision gradient checks: see numeric_grad for the error budget.
inline constexpr double kGradTol = 1e-6;

}  // namespace tessera::kernels::testing
