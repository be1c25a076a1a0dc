// LossScaler against sequences derived by hand from DeepSpeed's rule:
// deepspeed/runtime/fp16/loss_scaler.py, DynamicLossScaler.update_scale(overflow) (DeepSpeed
// master, 2025), with the fp16 keys mapped as deepspeed/runtime/config.py's
// get_dynamic_loss_scale_args does (init_scale = 2**initial_scale_power, delayed_shift =
// hysteresis). In the derivations, `it` is cur_iter before the call, `hyst` cur_hysteresis,
// `last` last_overflow_iter and `stable` = it - last - 1.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/engine/loss_scaler.h"

namespace tessera::engine {
namespace {

struct Outcome {
  float scale;  // after the update, i.e. the next step's scale
  bool skipped;
  int hysteresis_left;
};

std::vector<Outcome> run(LossScaler& scaler, const std::vector<bool>& overflows) {
  std::vector<Outcome> outcomes;
  for (bool overflow : overflows) {
    const bool skipped = scaler.update(overflow);
    outcomes.push_back({scaler.scale(), skipped, scaler.hysteresis_left()});
  }
  return outcomes;
}

void expect_sequence(const std::vector<Outcome>& got, const std::vector<float>& scales,
                     const std::vector<bool>& skipped, const std::vector<int>& hysteresis) {
  ASSERT_EQ(got.size(), scales.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].scale, scales[i]) << "scale after update " << i;
    EXPECT_EQ(got[i].skipped, skipped[i]) << "skipped at update " << i;
    if (!hysteresis.empty()) {
      EXPECT_EQ(got[i].hysteresis_left, hysteresis[i]) << "hysteresis after update " << i;
    }
  }
}

constexpr bool T = true;
constexpr bool F = false;

TEST(LossScalerTest, DefaultsAreDeepSpeeds) {
  const LossScalerConfig defaults;
  EXPECT_EQ(defaults.loss_scale, 0.0f);
  EXPECT_EQ(defaults.initial_scale_power, 16);
  EXPECT_EQ(defaults.loss_scale_window, 1000);
  EXPECT_EQ(defaults.hysteresis, 2);
  EXPECT_FALSE(defaults.consecutive_hysteresis);
  EXPECT_EQ(defaults.min_loss_scale, 1.0f);

  LossScaler scaler(defaults);
  EXPECT_TRUE(scaler.dynamic());
  EXPECT_EQ(scaler.scale(), 65536.0f);
  // stable = it for it < first overflow: it = 1000 is the first with stable % 1000 == 0.
  for (int i = 0; i < 1000; ++i) ASSERT_FALSE(scaler.update(false));
  EXPECT_EQ(scaler.scale(), 65536.0f);
  scaler.update(false);
  EXPECT_EQ(scaler.scale(), 131072.0f);
  // Hysteresis 2: the first overflow only spends hysteresis.
  EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 131072.0f);
  EXPECT_EQ(scaler.hysteresis_left(), 1);
  EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 65536.0f);
  EXPECT_EQ(scaler.iteration(), 1003);
}

// LossScaler (static): the scale never moves; overflowing steps are still skipped and
// never stop training, however many there are.
TEST(LossScalerTest, StaticScaleSkipsButNeverChanges) {
  LossScalerConfig config;
  config.loss_scale = 128.0f;
  config.min_loss_scale = 1024.0f;  // ignored by a static scaler
  LossScaler scaler(config);
  EXPECT_FALSE(scaler.dynamic());
  const std::vector<bool> overflows = {F, T, F, T, T, F};
  expect_sequence(run(scaler, overflows), {128, 128, 128, 128, 128, 128}, overflows, {});
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 128.0f);
  EXPECT_EQ(scaler.skipped_steps(), 103);
  EXPECT_EQ(scaler.overflow_count(), 103);
  EXPECT_EQ(scaler.iteration(), 106);
}

// init 2^4 = 16, window 3, hysteresis 2, consecutive off:
//  it ovf  rule                                               scale hyst
//   0  F   stable 0                                             16    2
//   1  T   hyst 2 != 1: hyst -> 1, last 1                       16    1
//   2  F   stable 0; not consecutive: hyst stays 1              16    1
//   3  T   hyst 1: scale 16/2 = 8, last 3                        8    1
//   4  T   hyst 1: scale 4, last 4                               4    1
//   5  F   stable 0                                              4    1
//   6  F   stable 1                                              4    1
//   7  F   stable 2                                              4    1
//   8  F   stable 3, 3 % 3 == 0: hyst -> 2, scale 8              8    2
//   9  F   stable 4                                              8    2
//  10  F   stable 5                                              8    2
//  11  F   stable 6: scale 16 (hyst already 2)                  16    2
//  12  T   hyst 2: hyst -> 1, last 12                           16    1
//  13  T   hyst 1: scale 8, last 13                              8    1
TEST(LossScalerTest, DynamicHysteresisRefilledOnlyByGrowth) {
  LossScalerConfig config;
  config.initial_scale_power = 4;
  config.loss_scale_window = 3;
  LossScaler scaler(config);
  const std::vector<bool> overflows = {F, T, F, T, T, F, F, F, F, F, F, F, T, T};
  expect_sequence(run(scaler, overflows), {16, 16, 16, 8, 4, 4, 4, 4, 8, 8, 8, 16, 16, 8},
                  overflows, {2, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1});
  EXPECT_EQ(scaler.skipped_steps(), 5);
  EXPECT_EQ(scaler.overflow_count(), 5);
  EXPECT_EQ(scaler.iteration(), 14);
}

// The same overflows with consecutive_hysteresis on: every clean step refills hyst to 2.
//  it ovf  rule                                               scale hyst
//   0  F   hyst -> 2; stable 0                                  16    2
//   1  T   hyst 2: hyst -> 1, last 1                            16    1
//   2  F   hyst -> 2; stable 0                                  16    2
//   3  T   hyst 2: hyst -> 1, last 3 (consecutive off halved)   16    1
//   4  T   hyst 1: scale 8, last 4                               8    1
//   5  F   hyst -> 2; stable 0                                   8    2
//   6  F   stable 1                                              8    2
//   7  F   stable 2                                              8    2
//   8  F   stable 3: scale 16                                   16    2
//   9  F   stable 4                                             16    2
//  10  F   stable 5                                             16    2
//  11  F   stable 6: scale 32                                   32    2
//  12  T   hyst 2: hyst -> 1, last 12                           32    1
//  13  T   hyst 1: scale 16, last 13                            16    1
TEST(LossScalerTest, DynamicConsecutiveHysteresis) {
  LossScalerConfig config;
  config.initial_scale_power = 4;
  config.loss_scale_window = 3;
  config.consecutive_hysteresis = true;
  LossScaler scaler(config);
  const std::vector<bool> overflows = {F, T, F, T, T, F, F, F, F, F, F, F, T, T};
  expect_sequence(run(scaler, overflows), {16, 16, 16, 16, 8, 8, 8, 8, 16, 16, 16, 32, 32, 16},
                  overflows, {2, 1, 2, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1});
  EXPECT_EQ(scaler.skipped_steps(), 5);
}

// Hysteresis 1 (delayed_shift == 1) halves on every overflow. Window 2, init 2^3:
//  it0 T: 4 (last 0); it1 F: stable 0; it2 F: stable 1; it3 F: stable 2 -> 8;
//  it4 F: stable 3; it5 F: stable 4 -> 16; it6 T: 8 (last 6); it7 T: 4 (last 7);
//  it8 F: stable 0; it9 F: stable 1; it10 F: stable 2 -> 8.
TEST(LossScalerTest, DynamicWithoutHysteresisAndWindowGrowth) {
  LossScalerConfig config;
  config.initial_scale_power = 3;
  config.loss_scale_window = 2;
  config.hysteresis = 1;
  LossScaler scaler(config);
  const std::vector<bool> overflows = {T, F, F, F, F, F, T, T, F, F, F};
  expect_sequence(run(scaler, overflows), {4, 4, 4, 8, 8, 16, 8, 4, 4, 4, 8}, overflows,
                  {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
}

// A minimum that is not a power of two clamps the halving: 8 -> 4 -> max(2, 3) = 3, and the
// next overflow at 3 stops the run.
TEST(LossScalerTest, HalvingClampsAtMinimum) {
  LossScalerConfig config;
  config.initial_scale_power = 3;
  config.hysteresis = 1;
  config.min_loss_scale = 3.0f;
  LossScaler scaler(config);
  expect_sequence(run(scaler, {T, T}), {4, 3}, {T, T}, {});
  EXPECT_THROW(scaler.update(true), Error);
}

std::string error_message(LossScaler& scaler) {
  try {
    scaler.update(true);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// DeepSpeed raises only where it would halve (hyst == 1) a scale already at min_scale.
// init 2^1, min 1, hysteresis 2: it0 T: hyst -> 1 (2); it1 T: scale 1; it2 T: hyst 1 and
// scale == min -> error, state unchanged.
TEST(LossScalerTest, OverflowAtMinimumStopsWithClearError) {
  LossScalerConfig config;
  config.initial_scale_power = 1;
  LossScaler scaler(config);
  expect_sequence(run(scaler, {T, T}), {2, 1}, {T, T}, {1, 1});
  const std::string message = error_message(scaler);
  EXPECT_NE(message.find("min_loss_scale = 1"), std::string::npos) << message;
  EXPECT_NE(message.find("step 2"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
  EXPECT_EQ(scaler.scale(), 1.0f);
  EXPECT_EQ(scaler.iteration(), 2);
  EXPECT_EQ(scaler.skipped_steps(), 2);
}

// With consecutive hysteresis a clean step at the minimum refills hyst, so one more isolated
// overflow is tolerated there: it0 T: hyst 1 (2); it1 T: 1; it2 F: hyst 2; it3 T: hyst 1
// (no error: the scale would not drop); it4 T: error.
TEST(LossScalerTest, HysteresisDefersTheMinimumError) {
  LossScalerConfig config;
  config.initial_scale_power = 1;
  config.consecutive_hysteresis = true;
  LossScaler scaler(config);
  expect_sequence(run(scaler, {T, T, F, T}), {2, 1, 1, 1}, {T, T, F, T}, {1, 1, 2, 1});
  EXPECT_THROW(scaler.update(true), Error);
}

TEST(LossScalerTest, RejectsUnusableConfig) {
  auto make = [](auto edit) {
    LossScalerConfig config;
    edit(config);
    return LossScaler(config);
  };
  EXPECT_THROW(make([](LossScalerConfig& c) { c.loss_scale = -1.0f; }), InvalidArgument);
  EXPECT_THROW(make([](LossScalerConfig& c) { c.loss_scale_window = 0; }), InvalidArgument);
  EXPECT_THROW(make([](LossScalerConfig& c) { c.hysteresis = 0; }), InvalidArgument);
  EXPECT_THROW(make([](LossScalerConfig& c) { c.min_loss_scale = 0.0f; }), InvalidArgument);
  EXPECT_THROW(make([](LossScalerConfig& c) { c.initial_scale_power = 128; }), InvalidArgument);
  EXPECT_THROW(make([](LossScalerConfig& c) {
                 c.initial_scale_power = 2;
                 c.min_loss_scale = 8.0f;
               }),
               InvalidArgument);
  // Dynamic-only keys do not matter to a static scaler.
  EXPECT_NO_THROW(make([](LossScalerConfig& c) {
    c.loss_scale = 64.0f;
    c.hysteresis = 0;
  }));
}

}  // namespace
}  // namespace tessera::engine
