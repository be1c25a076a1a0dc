#include "parallel/pp/partition.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/core/error.h"

namespace tessera::parallel::pp {
namespace {

void check_counts(int items, int parts) {
  TS_CHECK(parts >= 1, "a pipeline partition needs at least one part, got {}", parts);
  TS_CHECK(parts <= items,
           "pipeline_model_parallel_size x virtual size = {} stages need at least {} transformer "
           "blocks, the model has {}: use fewer stages or chunks, or more layers (model.n_layer)",
           parts, parts, items);
}

// Fewest parts of cost <= bound that cover costs[from..n), greedily (each part as long as it
// can be), which is optimal for a contiguous split; parts + 1 if some block alone exceeds it.
int parts_needed(const std::vector<int64_t>& prefix, int64_t bound) {
  const int n = static_cast<int>(prefix.size()) - 1;
  int parts = 0;
  for (int i = 0; i < n;) {
    // The furthest j with prefix[j] - prefix[i] <= bound.
    const int j = static_cast<int>(
        std::upper_bound(prefix.begin() + i, prefix.end(), prefix[i] + bound) - prefix.begin() - 1);
    if (j == i) return std::numeric_limits<int>::max();
    ++parts;
    i = j;
  }
  return parts;
}

}  // namespace

std::vector<int> partition_uniform(int items, int parts) {
  check_counts(items, parts);
  std::vector<int> b(parts + 1, 0);
  const int size = items / parts, larger = items % parts;
  for (int i = 0; i < parts; ++i) b[i + 1] = b[i] + size + (i < larger ? 1 : 0);
  return b;
}

std::vector<int> partition_balanced(std::span<const int64_t> costs, int parts) {
  const int n = static_cast<int>(costs.size());
  check_counts(n, parts);
  std::vector<int64_t> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i) {
    TS_CHECK(costs[i] >= 0, "block {} has cost {}: block costs must be >= 0", i, costs[i]);
    prefix[i + 1] = prefix[i] + costs[i];
  }
  // The least bound on a part's cost that `parts` parts can meet. With n >= parts, fewer parts
  // can always be split further without exceeding the bound (costs are >= 0).
  int64_t lo = *std::max_element(costs.begin(), costs.end()), hi = prefix[n];
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (parts_needed(prefix, mid) <= parts) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int64_t bound = lo;
  // Among the splits within the bound, the least sum of squared part costs: best[k][i] over
  // costs[i..n) in k parts, filled from the end so that walking forward picks the earliest
  // boundary among equals. 128-bit: squares of parameter counts pass 2^63.
  using Sq = unsigned __int128;
  constexpr Sq kNone = ~Sq{0};
  std::vector<std::vector<Sq>> best(parts + 1, std::vector<Sq>(n + 1, kNone));
  best[0][n] = 0;
  for (int k = 1; k <= parts; ++k) {
    for (int i = n - k; i >= 0; --i) {
      for (int j = i + 1; j <= n - (k - 1) && prefix[j] - prefix[i] <= bound; ++j) {
        if (best[k - 1][j] == kNone) continue;
        const Sq part = static_cast<Sq>(prefix[j] - prefix[i]);
        best[k][i] = std::min(best[k][i], part * part + best[k - 1][j]);
      }
    }
  }
  TS_CHECK_EQ(best[parts][0] == kNone, false, "balanced partition within its own bound");
  std::vector<int> b{0};
  for (int k = parts, i = 0; k > 0; --k) {
    for (int j = i + 1;; ++j) {
      const Sq part = static_cast<Sq>(prefix[j] - prefix[i]);
      if (best[k - 1][j] != kNone && prefix[j] - prefix[i] <= bound &&
          part * part + best[k - 1][j] == best[k][i]) {
        b.push_back(j);
        i = j;
        break;
      }
    }
  }
  return b;
}

std::vector<int> partition_explicit(std::span<const int> sizes, int items) {
  TS_CHECK(!sizes.empty(), "an explicit pipeline partition needs at least one part size");
  std::vector<int> b{0};
  for (size_t i = 0; i < sizes.size(); ++i) {
    TS_CHECK(sizes[i] >= 1,
             "partition_method {}: part {} has {} transformer blocks, every part needs at least 1",
             fmt::join(sizes, ","), i, sizes[i]);
    b.push_back(b.back() + sizes[i]);
  }
  TS_CHECK(b.back() == items,
           "partition_method {} covers {} transformer blocks, the model has {}: the sizes must "
           "add up to {}",
           fmt::join(sizes, ","), b.back(), items, items);
  return b;
}

PartitionMethod parse_partition_method(const std::string& text) {
  std::string s;
  for (char ch : text) {
    if (!std::isspace(static_cast<unsigned char>(ch))) {
      s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
  }
  if (s == "uniform") return {PartitionMethod::Kind::Uniform, {}};
  if (s == "parameters") return {PartitionMethod::Kind::Parameters, {}};
  PartitionMethod m{PartitionMethod::Kind::Explicit, {}};
  bool ok = !s.empty();
  for (size_t at = 0; ok && at <= s.size();) {
    const size_t comma = std::min(s.find(',', at), s.size());
    const std::string field = s.substr(at, comma - at);
    ok = !field.empty() && field.size() <= 9 &&
         std::all_of(field.begin(), field.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (ok) m.sizes.push_back(std::stoi(field));
    at = comma + 1;
  }
  TS_CHECK(ok,
           "partition_method '{}' is unknown: use uniform, parameters, or the transformer blocks "
           "of each stage such as 3,3,2,2",
           text);
  return m;
}

std::vector<int> partition(const PartitionMethod& method, std::span<const int64_t> costs,
                           int parts) {
  const int n = static_cast<int>(costs.size());
  switch (method.kind) {
    case PartitionMethod::Kind::Uniform:
      return partition_uniform(n, parts);
    case PartitionMethod::Kind::Parameters:
      return partition_balanced(costs, parts);
    case PartitionMethod::Kind::Explicit:
      TS_CHECK(static_cast<int>(method.sizes.size()) == parts,
               "partition_method {} lists {} stages, the pipeline has {} (pipeline_model_parallel_"
               "size x virtual size): give one size per stage",
               fmt::join(method.sizes, ","), method.sizes.size(), parts);
      return partition_explicit(method.sizes, n);
  }
  return {};
}

}  // namespace tessera::parallel::pp
