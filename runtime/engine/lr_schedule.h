// Learning-rate schedules with DeepSpeed's names, parameters and formulas.
#pragma once

#include <cstdint>

#include "runtime/engine/config.h"

namespace tessera::engine {

// The schedule's value at scheduler iteration `step` (DeepSpeed's last_batch_iteration),
// given the optimizer's base lr and the run's total optimizer steps (the fallback for
// total_num_steps).
double learning_rate(const SchedulerConfig& s, double base_lr, int64_t step, int64_t total_steps);

// The learning rate optimizer update `update` (0-based) runs with, indexed as DeepSpeed's
// engine does: the scheduler sets its initial lr at construction (warmup_min_lr for
// WarmupLR / WarmupDecayLR, 0 for WarmupCosineLR) and steps after each update, so update 0
// uses the initial lr and update n >= 1 uses learning_rate(n - 1).
double lr_for_update(const SchedulerConfig& s, double base_lr, int64_t update, int64_t total_steps);

}  // namespace tessera::engine
