#include "runtime/engine/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace tessera::engine {
namespace {

// DeepSpeed's warm-up fraction: log(step + 1) / log(warmup) or step / warmup, 1 after.
double warmup_gamma(const SchedulerConfig& s, int64_t step) {
  if (step >= s.warmup_num_steps) return 1.0;
  if (s.warmup_type == "linear") return static_cast<double>(step) / s.warmup_num_steps;
  if (s.warmup_num_steps <= 1) return 1.0;
  return std::log(static_cast<double>(step + 1)) / std::log(static_cast<double>(s.warmup_num_steps));
}

}  // namespace

double learning_rate(const SchedulerConfig& s, double base_lr, int64_t step, int64_t total_steps) {
  if (s.type.empty()) return base_lr;
  const int64_t total = s.total_num_steps > 0 ? s.total_num_steps : total_steps;
  if (s.type == "WarmupCosineLR") {
    // Ratios of the optimizer's lr: a warm-up from warmup_min_ratio to 1, then a cosine
    // down to cos_min_ratio at total_num_steps.
    if (step < s.warmup_num_steps) {
      return base_lr * (s.warmup_min_ratio + (1.0 - s.warmup_min_ratio) * warmup_gamma(s, step));
    }
    const double done = static_cast<double>(step - s.warmup_num_steps + 1);
    const double span = static_cast<double>(std::max<int64_t>(1, total - s.warmup_num_steps));
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, done / span)));
    return base_lr * std::max(0.0, s.cos_min_ratio + (1.0 - s.cos_min_ratio) * cosine);
  }
  const double max_lr = s.warmup_max_lr >= 0 ? s.warmup_max_lr : base_lr;
  const double min_lr = s.warmup_min_lr;
  if (s.type == "WarmupLR" || step < s.warmup_num_steps) {
    return min_lr + (max_lr - min_lr) * warmup_gamma(s, step);
  }
  // WarmupDecayLR after warm-up: linear decay of the warm-up's gain to 0 at total steps.
  const double span = static_cast<double>(std::max<int64_t>(1, total - s.warmup_num_steps));
  const double gamma = std::max(0.0, static_cast<double>(total - step) / span);
  return min_lr + (max_lr - min_lr) * gamma;
}

}  // namespace tessera::engine
