// Learning-rate schedules with DeepSpeed's names, parameters and formulas.
#pragma once

#include <cstdint>

#include "runtime/engine/config.h"

namespace tessera::engine {

// The learning rate for optimizer step `step` (0-based: the first update uses step 0),
// given the optimizer's base lr and the total number of training steps.
double learning_rate(const SchedulerConfig& s, double base_lr, int64_t step, int64_t total_steps);

}  // namespace tessera::engine
