// DeepSpeed's loss-scale rule, checked line by line against
// deepspeed/runtime/fp16/loss_scaler.py: DynamicLossScaler.__init__ and update_scale, and the
// fp16 key mapping in deepspeed/runtime/config.py (get_dynamic_loss_scale_args). Where tessera
// differs, the comment says so.
#include "runtime/engine/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "runtime/core/error.h"

namespace tessera::engine {
namespace {

// DeepSpeed's scale_factor: not a config key.
constexpr float kScaleFactor = 2.0f;
// The largest power of two a float holds. DeepSpeed has no ceiling, but a scale past it
// would be infinite and every later step would overflow without ever reaching the minimum;
// only a run whose gradients are all zero for ~127 windows gets here.
constexpr float kMaxScale = 0x1p127f;

}  // namespace

LossScaler::LossScaler(const LossScalerConfig& config)
    : config_(config),
      dynamic_(config.loss_scale == 0.0f),
      hysteresis_left_(config.hysteresis) {
  TS_CHECK(std::isfinite(config.loss_scale) && config.loss_scale >= 0.0f,
           "fp16.loss_scale = {} is not usable: give 0 for dynamic scaling or a positive static "
           "scale such as 1024",
           config.loss_scale);
  if (!dynamic_) {
    scale_ = config.loss_scale;
    return;
  }
  // DeepSpeed validates these three as positive (loss_scale_validation.py).
  TS_CHECK(config.loss_scale_window >= 1,
           "fp16.loss_scale_window = {} must be at least 1 (DeepSpeed's default is 1000)",
           config.loss_scale_window);
  TS_CHECK(config.hysteresis >= 1, "fp16.hysteresis = {} must be at least 1 (default 2)",
           config.hysteresis);
  TS_CHECK(std::isfinite(config.min_loss_scale) && config.min_loss_scale > 0.0f,
           "fp16.min_loss_scale = {} must be a positive number (default 1)",
           config.min_loss_scale);
  scale_ = std::ldexp(1.0f, config.initial_scale_power);
  TS_CHECK(std::isfinite(scale_) && scale_ > 0.0f,
           "fp16.initial_scale_power = {} gives no float scale: use a power in [-126, 127] "
           "(default 16)",
           config.initial_scale_power);
  // Not checked by DeepSpeed, whose max(scale / 2, min) would then *raise* the scale on
  // overflow.
  TS_CHECK(scale_ >= config.min_loss_scale,
           "fp16.initial_scale_power = {} starts the scale at {}, below fp16.min_loss_scale = {}: "
           "raise the power or lower the minimum",
           config.initial_scale_power, scale_, config.min_loss_scale);
}

LossScaler::State LossScaler::state() const {
  return {scale_, hysteresis_left_, iteration_, last_overflow_iteration_, skipped_steps_,
          overflow_count_};
}

void LossScaler::restore(const State& s) {
  TS_CHECK(std::isfinite(s.scale) && s.scale > 0.0 && s.hysteresis_left >= 0 && s.iteration >= 0,
           "saved loss-scaler state (scale {}, hysteresis {}, iteration {}) is not usable: the "
           "checkpoint is damaged",
           s.scale, s.hysteresis_left, s.iteration);
  scale_ = static_cast<float>(s.scale);
  hysteresis_left_ = s.hysteresis_left;
  iteration_ = s.iteration;
  last_overflow_iteration_ = s.last_overflow_iteration;
  skipped_steps_ = s.skipped_steps;
  overflow_count_ = s.overflow_count;
}

bool LossScaler::update(bool overflow) {
  if (!dynamic_) {
    // DeepSpeed's static LossScaler never changes its scale; its optimizers still skip an
    // overflowing step.
    ++iteration_;
    if (overflow) {
      ++overflow_count_;
      ++skipped_steps_;
    }
    return overflow;
  }

  if (overflow) {
    // cur_hysteresis is 1 whenever delayed_shift is 1 (it is only ever refilled to
    // delayed_shift), so DeepSpeed's `delayed_shift == 1 or cur_hysteresis == 1` is this.
    if (hysteresis_left_ == 1) {
      // DeepSpeed tests cur_scale == min_scale; the constructor's check keeps the scale at
      // or above the minimum, so <= is the same test, written defensively.
      if (scale_ <= config_.min_loss_scale) {
        TS_THROW(Error,
                 "fp16: gradients overflowed (inf/nan) at step {} with the loss scale already at "
                 "fp16.min_loss_scale = {}; lower the learning rate, lower fp16.min_loss_scale, "
                 "or train in bf16 (bf16.enabled)",
                 iteration_, config_.min_loss_scale);
      }
      scale_ = std::max(scale_ / kScaleFactor, config_.min_loss_scale);
    } else {
      --hysteresis_left_;
    }
    last_overflow_iteration_ = iteration_;
    ++overflow_count_;
    ++skipped_steps_;
  } else {
    if (config_.consecutive_hysteresis) hysteresis_left_ = config_.hysteresis;
    // Steps since the last overflow, not counting this one: the scale doubles on the clean
    // step after each full window of clean steps.
    const int64_t stable_interval = iteration_ - last_overflow_iteration_ - 1;
    if (stable_interval > 0 && stable_interval % config_.loss_scale_window == 0) {
      if (!config_.consecutive_hysteresis) hysteresis_left_ = config_.hysteresis;
      scale_ = std::min(scale_ * kScaleFactor, kMaxScale);
    }
  }
  ++iteration_;
  return overflow;
}

}  // namespace tessera::engine
