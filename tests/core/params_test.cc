// ParamRegistry layout (offsets, contiguous layer ranges, registration-order checks),
// LocalParamAccess pointer arithmetic, and init_params determinism and statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/params.h"
#include "runtime/core/rng.h"

namespace tessera {
namespace {

ParamSpec spec(std::string name, Shape shape, int layer, ParamInit init = ParamInit::Zeros,
               float std = 0.0f) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.layer = layer;
  s.init = init;
  s.init_std = std;
  return s;
}

// wte/wpe in layer 0, two small blocks, ln_f in the last layer.
ParamRegistry tiny_model() {
  ParamRegistry r;
  r.add(spec("wte.weight", {10, 4}, 0, ParamInit::Normal, 0.02f));
  r.add(spec("wpe.weight", {8, 4}, 0, ParamInit::Normal, 0.01f));
  r.add(spec("h.0.ln_1.weight", {4}, 1, ParamInit::Ones));
  r.add(spec("h.0.ln_1.bias", {4}, 1));
  r.add(spec("h.0.attn.c_attn.weight", {12, 4}, 1, ParamInit::Normal, 0.02f));
  r.add(spec("h.1.ln_1.weight", {4}, 2, ParamInit::Ones));
  r.add(spec("ln_f.bias", {4}, 3));
  return r;
}

TEST(ParamRegistryTest, OffsetsArePrefixSums) {
  const ParamRegistry r = tiny_model();
  const std::vector<int64_t> expected_offsets = {0, 40, 72, 76, 80, 128, 132};
  ASSERT_EQ(r.params().size(), expected_offsets.size());
  for (size_t i = 0; i < expected_offsets.size(); ++i) {
    EXPECT_EQ(r.params()[i].offset, expected_offsets[i]) << r.params()[i].name;
  }
  EXPECT_EQ(r.numel(), 136);
  EXPECT_EQ(r.find("h.0.attn.c_attn.weight").offset, 80);
  EXPECT_EQ(r.find("h.0.attn.c_attn.weight").numel(), 48);
}

TEST(ParamRegistryTest, LayerRangesAreContiguousAndCoverTheBuffer) {
  const ParamRegistry r = tiny_model();
  ASSERT_EQ(r.num_layers(), 4);
  EXPECT_EQ(r.layer(0).begin, 0);
  EXPECT_EQ(r.layer(0).end, 72);
  EXPECT_EQ(r.layer(1).begin, 72);
  EXPECT_EQ(r.layer(1).end, 128);
  EXPECT_EQ(r.layer(1).numel(), 56);
  EXPECT_EQ(r.layer(2).begin, 128);
  EXPECT_EQ(r.layer(2).end, 132);
  EXPECT_EQ(r.layer(3).begin, 132);
  EXPECT_EQ(r.layer(3).end, r.numel());
  EXPECT_THROW(r.layer(4), std::out_of_range);
}

TEST(ParamRegistryTest, DuplicateNameThrows) {
  ParamRegistry r;
  r.add(spec("a", {2}, 0));
  EXPECT_THROW(r.add(spec("a", {3}, 0)), InvalidArgument);
  EXPECT_THROW(r.add(spec("a", {3}, 1)), InvalidArgument);
  EXPECT_EQ(r.numel(), 2);  // the failed adds changed nothing
  EXPECT_EQ(r.params().size(), 1u);
}

TEST(ParamRegistryTest, OutOfOrderLayerThrows) {
  ParamRegistry r;
  r.add(spec("a", {2}, 0));
  r.add(spec("b", {2}, 1));
  EXPECT_THROW(r.add(spec("back", {2}, 0)), InvalidArgument);  // going back a layer
  EXPECT_NO_THROW(r.add(spec("c", {2}, 1)));                   // the last layer continues
  EXPECT_EQ(r.num_layers(), 2);
  EXPECT_EQ(r.layer(1).end, 6);
}

// A pipeline rank's registry keeps the model's layer numbers: the layers it skips are empty.
TEST(ParamRegistryTest, SkippedLayersAreEmpty) {
  ParamRegistry r;
  r.add(spec("late", {2}, 2));  // layers 0 and 1 belong to another stage
  r.add(spec("later", {3}, 4));
  r.pad_layers(6);
  ASSERT_EQ(r.num_layers(), 6);
  for (int l : {0, 1, 3, 5}) EXPECT_EQ(r.layer(l).numel(), 0) << "layer " << l;
  EXPECT_EQ(r.layer(2).begin, 0);
  EXPECT_EQ(r.layer(2).end, 2);
  EXPECT_EQ(r.layer(4).begin, 2);
  EXPECT_EQ(r.layer(4).end, 5);
  EXPECT_EQ(r.numel(), 5);
  EXPECT_THROW(r.add(spec("back", {2}, 3)), InvalidArgument);
}

TEST(ParamRegistryTest, FindUnknownThrowsWithName) {
  const ParamRegistry r = tiny_model();
  try {
    r.find("h.9.mlp.c_fc.weight");
    FAIL() << "find of an unknown name did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("h.9.mlp.c_fc.weight"), std::string::npos) << e.what();
  }
}

TEST(LocalParamAccessTest, PointsAtEachLayersRange) {
  const ParamRegistry r = tiny_model();
  std::vector<float> params(r.numel()), grads(r.numel());
  LocalParamAccess access(r, params.data(), grads.data(), sizeof(float));
  for (int l = 0; l < r.num_layers(); ++l) {
    EXPECT_EQ(access.acquire(l), params.data() + r.layer(l).begin) << "layer " << l;
    EXPECT_EQ(access.grads(l), grads.data() + r.layer(l).begin) << "layer " << l;
    access.release(l);
    access.grads_ready(l);
  }
}

TEST(InitParamsTest, ZerosOnesAndSameSeedSameValues) {
  const ParamRegistry r = tiny_model();
  std::vector<float> a(r.numel(), -7.0f), b(r.numel(), 5.0f);
  init_params(r, a.data(), 1234);
  init_params(r, b.data(), 1234);
  EXPECT_EQ(a, b);
  const ParamSpec& ln_w = r.find("h.0.ln_1.weight");
  const ParamSpec& ln_b = r.find("h.0.ln_1.bias");
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a[ln_w.offset + i], 1.0f);
    EXPECT_EQ(a[ln_b.offset + i], 0.0f);
  }
  // Normal parameters are not all zero (the buffer was prefilled with garbage).
  const ParamSpec& wte = r.find("wte.weight");
  int nonzero = 0;
  for (int64_t i = 0; i < wte.numel(); ++i) nonzero += a[wte.offset + i] != 0.0f;
  EXPECT_EQ(nonzero, wte.numel());
}

TEST(InitParamsTest, DifferentSeedDifferentValues) {
  const ParamRegistry r = tiny_model();
  std::vector<double> a(r.numel()), b(r.numel());
  init_params(r, a.data(), 1);
  init_params(r, b.data(), 2);
  const ParamSpec& wte = r.find("wte.weight");
  int same = 0;
  for (int64_t i = 0; i < wte.numel(); ++i) same += a[wte.offset + i] == b[wte.offset + i];
  EXPECT_EQ(same, 0);
}

TEST(InitParamsTest, FloatIsTheRoundedDouble) {
  const ParamRegistry r = tiny_model();
  std::vector<float> f(r.numel());
  std::vector<double> d(r.numel());
  init_params(r, f.data(), 99);
  init_params(r, d.data(), 99);
  for (int64_t i = 0; i < r.numel(); ++i) EXPECT_EQ(f[i], static_cast<float>(d[i])) << i;
}

// A parameter's values depend on (seed, its index, element) only, so appending parameters
// (a deeper model) leaves the earlier ones unchanged.
TEST(InitParamsTest, ValuesDoNotDependOnLaterParameters) {
  const ParamRegistry full = tiny_model();
  ParamRegistry prefix;
  prefix.add(spec("wte.weight", {10, 4}, 0, ParamInit::Normal, 0.02f));
  prefix.add(spec("wpe.weight", {8, 4}, 0, ParamInit::Normal, 0.01f));
  std::vector<float> a(full.numel()), b(prefix.numel());
  init_params(full, a.data(), 7);
  init_params(prefix, b.data(), 7);
  for (int64_t i = 0; i < prefix.numel(); ++i) EXPECT_EQ(a[i], b[i]) << i;
}

// The values init_params has always written, computed here without it: each element from
// (seed, parameter index, element index) alone.
template <typename T>
std::vector<T> reference_init(const ParamRegistry& r, uint64_t seed) {
  std::vector<T> out(r.numel());
  for (size_t i = 0; i < r.params().size(); ++i) {
    const ParamSpec& p = r.params()[i];
    for (int64_t j = 0; j < p.numel(); ++j) {
      out[p.offset + j] = p.init == ParamInit::Ones ? T(1)
                          : p.init == ParamInit::Zeros
                              ? T(0)
                              : static_cast<T>(p.init_std * normal_at(seed, i, j));
    }
  }
  return out;
}

template <typename T>
void expect_ranges_match_the_whole_init() {
  const ParamRegistry r = tiny_model();  // 136 elements; parameters start at 0, 40, 72, ...
  const std::vector<T> whole = reference_init<T>(r, 31);
  std::vector<T> full(r.numel());
  init_params(r, full.data(), 31);
  ASSERT_EQ(std::memcmp(full.data(), whole.data(), whole.size() * sizeof(T)), 0);
  // Ranges starting and ending inside parameters, on their borders, spanning several, one
  // element, empty, the whole model, and ZeRO-like shards of 3 ranks (48 elements each).
  const std::vector<std::pair<int64_t, int64_t>> ranges = {
      {0, 136}, {0, 1},     {5, 5},     {3, 37}, {39, 41}, {40, 72},  {41, 131},
      {77, 78}, {100, 136}, {135, 136}, {0, 48}, {48, 96}, {96, 136}, {17, 129}};
  for (const auto& [begin, end] : ranges) {
    std::vector<T> part(static_cast<size_t>(end - begin) + 1, T(-7));  // one sentinel past
    init_params_range(r, part.data(), 31, begin, end);
    for (int64_t i = begin; i < end; ++i) {
      ASSERT_EQ(std::memcmp(&part[i - begin], &whole[i], sizeof(T)), 0)
          << "[" << begin << ", " << end << ") element " << i;
    }
    EXPECT_EQ(part.back(), T(-7)) << "[" << begin << ", " << end << ") wrote past its end";
  }
  std::vector<T> scratch(200);
  EXPECT_THROW(init_params_range(r, scratch.data(), 31, 10, 5), InvalidArgument);
  EXPECT_THROW(init_params_range(r, scratch.data(), 31, 0, 137), InvalidArgument);
  EXPECT_THROW(init_params_range(r, scratch.data(), 31, -1, 3), InvalidArgument);
}

TEST(InitParamsTest, RangesAreBitIdenticalToTheWholeInit) {
  expect_ranges_match_the_whole_init<float>();
  expect_ranges_match_the_whole_init<double>();
}

TEST(InitParamsTest, NormalHasTheRequestedStd) {
  ParamRegistry r;
  constexpr int64_t kN = 200000;
  constexpr float kStd = 0.02f;
  r.add(spec("w", {kN}, 0, ParamInit::Normal, kStd));
  std::vector<double> w(kN);
  init_params(r, w.data(), 42);
  double sum = 0.0, sum_sq = 0.0;
  int beyond_3std = 0;
  for (double x : w) {
    sum += x;
    sum_sq += x * x;
    beyond_3std += std::abs(x) > 3 * kStd;
  }
  const double mean = sum / kN;
  const double stddev = std::sqrt(sum_sq / kN - mean * mean);
  // Sampling error of the mean is std/sqrt(N) ~ 4.5e-5 and of the std ~0.16%: allow ~5 sigma
  // for the mean and 2% for the std.
  EXPECT_NEAR(mean, 0.0, 5 * kStd / std::sqrt(double(kN)));
  EXPECT_NEAR(stddev, kStd, 0.02 * kStd);
  // A normal has 0.27% of its mass beyond 3 sigma: a crude shape check.
  EXPECT_NEAR(double(beyond_3std) / kN, 0.0027, 0.001);
}

}  // namespace
}  // namespace tessera
