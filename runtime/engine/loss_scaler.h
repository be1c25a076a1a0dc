// The fp16 loss scaler: DeepSpeed's static and dynamic loss scaling with its config keys,
// defaults and update rule (deepspeed/runtime/fp16/loss_scaler.py, DynamicLossScaler). The
// trainer multiplies the loss by scale(), checks every gradient shard for inf/nan
// (kernels::cpu::has_nonfinite), agrees on the answer across ranks, and calls update() once
// per optimizer step with it. bf16 runs need no scaler.
#pragma once

#include <cstdint>

namespace tessera::engine {

// The `fp16` block's scaling keys, with DeepSpeed's defaults.
struct LossScalerConfig {
  // fp16.loss_scale: 0 selects dynamic scaling; any other value is a static scale.
  float loss_scale = 0.0f;
  // fp16.initial_scale_power: a dynamic scaler starts at 2^initial_scale_power.
  int initial_scale_power = 16;
  // fp16.loss_scale_window: overflow-free steps between two doublings of the scale.
  int64_t loss_scale_window = 1000;
  // fp16.hysteresis: overflows tolerated before the scale is first halved (DeepSpeed's
  // delayed_shift); 1 halves on every overflow.
  int hysteresis = 2;
  // fp16.consecutive_hysteresis: refill the hysteresis after every overflow-free step, so
  // only consecutive overflows lower the scale.
  bool consecutive_hysteresis = false;
  // fp16.min_loss_scale: the scale never goes below this; overflowing there stops training.
  float min_loss_scale = 1.0f;
};

class LossScaler {
 public:
  // Everything update() reads and writes: a checkpoint saves it, so a resumed run scales
  // and skips exactly as the uninterrupted one.
  struct State {
    double scale = 1.0;
    int hysteresis_left = 0;
    int64_t iteration = 0;
    int64_t last_overflow_iteration = -1;
    int64_t skipped_steps = 0;
    int64_t overflow_count = 0;
  };

  // Throws InvalidArgument naming the fp16 key of an unusable value.
  explicit LossScaler(const LossScalerConfig& config);

  // The factor the next step's loss is multiplied by.
  float scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }

  // Records one optimizer step's outcome (`overflow`: an inf or nan in any gradient on any
  // rank) and adjusts the scale for the next step. Returns whether this step must be skipped,
  // which is exactly when it overflowed. Throws Error, changing nothing, when a dynamic scale
  // would have to drop below fp16.min_loss_scale.
  bool update(bool overflow);

  // Every overflow skips its step, so these agree; both are reported in metrics.
  int64_t skipped_steps() const { return skipped_steps_; }
  int64_t overflow_count() const { return overflow_count_; }
  // update() calls so far (DeepSpeed's cur_iter).
  int64_t iteration() const { return iteration_; }
  // Overflows still tolerated before the scale is halved (DeepSpeed's cur_hysteresis).
  int hysteresis_left() const { return hysteresis_left_; }

  State state() const;
  // Continues from a saved state (the config's keys still set the rules). Throws
  // InvalidArgument for a scale that is not positive and finite.
  void restore(const State& state);

 private:
  LossScalerConfig config_;
  bool dynamic_;
  float scale_;
  int hysteresis_left_;
  int64_t iteration_ = 0;
  int64_t last_overflow_iteration_ = -1;
  int64_t skipped_steps_ = 0;
  int64_t overflow_count_ = 0;
};

}  // namespace tessera::engine
