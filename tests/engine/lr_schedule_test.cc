// Learning-rate schedules against DeepSpeed's formulas (deepspeed/runtime/lr_schedules.py),
// written out here at chosen steps. `step` is tessera's 0-based index of the optimizer update;
// the formulas below are DeepSpeed's as functions of its `last_batch_iteration`.
#include "runtime/engine/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tessera::engine {
namespace {

constexpr double kTol = 1e-12;

SchedulerConfig warmup_lr(const char* warmup_type, int64_t warmup, double min_lr, double max_lr) {
  SchedulerConfig s;
  s.type = "WarmupLR";
  s.warmup_type = warmup_type;
  s.warmup_num_steps = warmup;
  s.warmup_min_lr = min_lr;
  s.warmup_max_lr = max_lr;
  return s;
}

TEST(LrSchedule, NoSchedulerIsConstant) {
  SchedulerConfig s;  // type ""
  for (int64_t step : {0, 1, 50, 10000}) {
    EXPECT_DOUBLE_EQ(learning_rate(s, 3e-4, step, 100), 3e-4) << step;
  }
}

// WarmupLR, log: lr = min + (max - min) * ln(step + 1) / ln(W) for step < W, then max.
TEST(LrSchedule, WarmupLRLog) {
  const double lo = 1e-4, hi = 1e-3;
  const int64_t W = 10;
  const SchedulerConfig s = warmup_lr("log", W, lo, hi);
  auto expect = [&](int64_t step) {
    return step < W ? lo + (hi - lo) * std::log(step + 1.0) / std::log(double(W)) : hi;
  };
  EXPECT_NEAR(learning_rate(s, 5.0, 0, 100), lo, kTol);  // ln 1 = 0: starts at min
  for (int64_t step : {0, 1, 4, 5, 8, 9, 10, 11, 100, 1000}) {
    EXPECT_NEAR(learning_rate(s, 5.0, step, 100), expect(step), kTol) << "step " << step;
  }
  EXPECT_NEAR(learning_rate(s, 5.0, 1, 100), lo + (hi - lo) * std::log(2.0) / std::log(10.0), kTol);
  // The log warm-up reaches max at step W - 1 already (ln W / ln W).
  EXPECT_NEAR(learning_rate(s, 5.0, W - 1, 100), hi, kTol);
  // WarmupLR stays at max after warm-up, whatever the total.
  EXPECT_NEAR(learning_rate(s, 5.0, 500, 100), hi, kTol);
}

// WarmupLR, linear: lr = min + (max - min) * step / W for step < W, then max.
TEST(LrSchedule, WarmupLRLinear) {
  const double lo = 0.0, hi = 2e-3;
  const int64_t W = 20;
  const SchedulerConfig s = warmup_lr("linear", W, lo, hi);
  EXPECT_NEAR(learning_rate(s, 1.0, 0, 100), 0.0, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 1, 100), hi * 1.0 / 20.0, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 10, 100), hi * 0.5, kTol);   // mid-warm-up
  EXPECT_NEAR(learning_rate(s, 1.0, 19, 100), hi * 19.0 / 20.0, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 20, 100), hi, kTol);         // end of warm-up
  EXPECT_NEAR(learning_rate(s, 1.0, 100, 100), hi, kTol);
}

TEST(LrSchedule, WarmupLRMaxDefaultsToDeepSpeeds) {
  // DeepSpeed's WarmupLR ignores the optimizer's lr: warmup_max_lr defaults to 0.001.
  SchedulerConfig s = warmup_lr("linear", 4, 0.0, 0.0);
  s.warmup_max_lr = SchedulerConfig{}.warmup_max_lr;
  EXPECT_NEAR(learning_rate(s, 6e-4, 2, 100), 0.0005, kTol);
  EXPECT_NEAR(learning_rate(s, 6e-4, 4, 100), 0.001, kTol);
}

TEST(LrSchedule, UpdatesAreIndexedAsDeepSpeedsEngine) {
  // DeepSpeed sets the initial lr at construction and steps the scheduler after each update:
  // update 0 runs at the initial lr, update n at learning_rate(n - 1).
  const SchedulerConfig w = warmup_lr("linear", 10, 0.1, 1.0);
  EXPECT_NEAR(lr_for_update(w, 5.0, 0, 100), 0.1, kTol);
  for (int n = 1; n < 20; ++n) {
    EXPECT_NEAR(lr_for_update(w, 5.0, n, 100), learning_rate(w, 5.0, n - 1, 100), kTol) << n;
  }
  SchedulerConfig cosine;
  cosine.type = "WarmupCosineLR";
  cosine.warmup_min_ratio = 0.3;
  EXPECT_NEAR(lr_for_update(cosine, 2.0, 0, 100), 0.0, kTol);  // get_lr() before any step
  EXPECT_NEAR(lr_for_update(cosine, 2.0, 1, 100), 0.6, kTol);  // ratio warmup_min_ratio
  EXPECT_NEAR(lr_for_update(SchedulerConfig{}, 2.0, 7, 100), 2.0, kTol);  // no scheduler
}

// WarmupDecayLR: warm-up as WarmupLR, then
// lr = min + (max - min) * max(0, (total - step) / max(1, total - W)).
TEST(LrSchedule, WarmupDecayLR) {
  const double lo = 1e-5, hi = 1e-3;
  const int64_t W = 10, total = 50;
  SchedulerConfig s = warmup_lr("linear", W, lo, hi);
  s.type = "WarmupDecayLR";
  s.total_num_steps = total;
  auto decay = [&](int64_t step) {
    return lo + (hi - lo) * std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - W)));
  };
  EXPECT_NEAR(learning_rate(s, 1.0, 0, 999), lo, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 1, 999), lo + (hi - lo) * 0.1, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 5, 999), lo + (hi - lo) * 0.5, kTol);  // mid-warm-up
  EXPECT_NEAR(learning_rate(s, 1.0, 10, 999), hi, kTol);                   // end of warm-up: 40/40
  EXPECT_NEAR(learning_rate(s, 1.0, 10, 999), decay(10), kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 30, 999), lo + (hi - lo) * 0.5, kTol);  // mid-decay: 20/40
  EXPECT_NEAR(learning_rate(s, 1.0, 49, 999), decay(49), kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 50, 999), lo, kTol);  // total: back at min
  EXPECT_NEAR(learning_rate(s, 1.0, 80, 999), lo, kTol);  // clamped at 0 gain past the total

  // Log warm-up under WarmupDecayLR too.
  s.warmup_type = "log";
  EXPECT_NEAR(learning_rate(s, 1.0, 3, 999), lo + (hi - lo) * std::log(4.0) / std::log(10.0), kTol);
}

TEST(LrSchedule, WarmupDecayLRTotalDefaultsToTrainingSteps) {
  SchedulerConfig s = warmup_lr("linear", 10, 0.0, 1.0);
  s.type = "WarmupDecayLR";
  s.total_num_steps = -1;
  EXPECT_NEAR(learning_rate(s, 1.0, 60, /*total_steps=*/110), 0.5, kTol);  // (110-60)/(110-10)
  EXPECT_NEAR(learning_rate(s, 1.0, 110, 110), 0.0, kTol);
}

// WarmupCosineLR (ratios of the optimizer's lr):
//   step < W:  ratio = wmin + (1 - wmin) * gamma, gamma = step / W (linear) or ln(step+1)/ln(W)
//   else:      ratio = max(0, cmin + (1 - cmin) * (1 + cos(pi * (step - W + 1) / (total - W))) / 2)
TEST(LrSchedule, WarmupCosineLRLinear) {
  // The smoke test's schedule: lr 2e-3, 30 linear warm-up steps, cos_min_ratio 0.1, 300 steps.
  SchedulerConfig s;
  s.type = "WarmupCosineLR";
  s.warmup_type = "linear";
  s.warmup_num_steps = 30;
  s.cos_min_ratio = 0.1;
  s.warmup_min_ratio = 0.0;
  const double lr = 2e-3;
  const int64_t total = 300;
  auto cosine = [&](int64_t step) {
    const double c = (1.0 + std::cos(M_PI * double(step - 30 + 1) / double(total - 30))) / 2.0;
    return lr * std::max(0.0, 0.1 + 0.9 * c);
  };
  EXPECT_NEAR(learning_rate(s, lr, 0, total), 0.0, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 1, total), lr / 30.0, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 15, total), lr * 0.5, kTol);  // mid-warm-up
  EXPECT_NEAR(learning_rate(s, lr, 29, total), lr * 29.0 / 30.0, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 30, total), cosine(30), kTol);  // first decay step
  EXPECT_LT(learning_rate(s, lr, 30, total), lr);
  EXPECT_GT(learning_rate(s, lr, 30, total), 0.9999 * lr);
  // Mid-decay: step - W + 1 = 135 = half of 270, cos(pi/2) = 0, ratio 0.1 + 0.45.
  EXPECT_NEAR(learning_rate(s, lr, 164, total), lr * 0.55, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 200, total), cosine(200), kTol);
  // The last update (step total - 1) reaches cos_min_ratio exactly.
  EXPECT_NEAR(learning_rate(s, lr, total - 1, total), lr * 0.1, kTol);
  // Past the end tessera holds cos_min_ratio (DeepSpeed's cosine would rise again).
  EXPECT_NEAR(learning_rate(s, lr, total, total), lr * 0.1, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 2 * total, total), lr * 0.1, kTol);
}

TEST(LrSchedule, WarmupCosineLRLogWithMinRatioAndExplicitTotal) {
  SchedulerConfig s;
  s.type = "WarmupCosineLR";
  s.warmup_type = "log";
  s.warmup_num_steps = 8;
  s.warmup_min_ratio = 0.2;
  s.cos_min_ratio = 0.0;
  s.total_num_steps = 40;  // wins over the total passed in
  const double lr = 1.0;
  auto warm = [&](int64_t step) { return 0.2 + 0.8 * std::log(step + 1.0) / std::log(8.0); };
  EXPECT_NEAR(learning_rate(s, lr, 0, 999), 0.2, kTol);  // starts at warmup_min_ratio
  EXPECT_NEAR(learning_rate(s, lr, 1, 999), warm(1), kTol);
  EXPECT_NEAR(learning_rate(s, lr, 4, 999), warm(4), kTol);
  EXPECT_NEAR(learning_rate(s, lr, 7, 999), 1.0, kTol);  // ln 8 / ln 8
  // Decay over total - W = 32 updates; step 23 is half way (23 - 8 + 1 = 16).
  EXPECT_NEAR(learning_rate(s, lr, 23, 999), 0.5, kTol);
  EXPECT_NEAR(learning_rate(s, lr, 39, 999), 0.0, kTol);
}

TEST(LrSchedule, WarmupCosineLRDefaultRatios) {
  SchedulerConfig s;  // DeepSpeed's defaults: warmup_min_ratio 0, cos_min_ratio 1e-4, log, 1000
  s.type = "WarmupCosineLR";
  s.total_num_steps = 2000;
  EXPECT_NEAR(learning_rate(s, 1.0, 0, 0), 0.0, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 999, 0), 1.0, kTol);
  EXPECT_NEAR(learning_rate(s, 1.0, 1999, 0), 1e-4, kTol);
}

TEST(LrSchedule, WarmupNeverExceedsTheMaximumAndIsMonotone) {
  for (const char* type : {"log", "linear"}) {
    const SchedulerConfig s = warmup_lr(type, 50, 1e-5, 1e-3);
    double prev = -1.0;
    for (int64_t step = 0; step <= 60; ++step) {
      const double v = learning_rate(s, 1.0, step, 100);
      EXPECT_GE(v, prev) << type << " step " << step;
      EXPECT_LE(v, 1e-3 + kTol) << type << " step " << step;
      prev = v;
    }
  }
}

// DeepSpeed parity: DeepSpeed clamps warmup_num_steps to at least 2 (`self.warmup_num_steps = max(2,
//    warmup_num_steps)` in WarmupLR.__init__ and WarmupCosineLR.__init__); tessera uses 0 or 1
//    as given (log: gain 1 from step 0; linear W=1: gain 0 at step 0, 1 from step 1).
TEST(LrScheduleDeepSpeedParity, WarmupStepsAreAtLeastTwo) {
  const SchedulerConfig log1 = warmup_lr("log", 1, 0.0, 1.0);
  // DeepSpeed: W = 2, ln(0 + 1) / ln 2 = 0 at step 0, 1 at step 1.
  EXPECT_NEAR(learning_rate(log1, 1.0, 0, 100), 0.0, kTol);
  EXPECT_NEAR(learning_rate(log1, 1.0, 1, 100), 1.0, kTol);
  const SchedulerConfig lin1 = warmup_lr("linear", 1, 0.0, 1.0);
  // DeepSpeed: W = 2, 1 / 2 at step 1.
  EXPECT_NEAR(learning_rate(lin1, 1.0, 1, 100), 0.5, kTol);
  const SchedulerConfig lin0 = warmup_lr("linear", 0, 0.0, 1.0);
  EXPECT_NEAR(learning_rate(lin0, 1.0, 0, 100), 0.0, kTol);
}

}  // namespace
}  // namespace tessera::engine
