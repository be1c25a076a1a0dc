#include "runtime/engine/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace tessera::engine {
namespace {

// DeepSpeed's warm-up fraction: log(step + 1) / log(warmup) or step / warmup, 1 after.
// DeepSpeed clamps the warm-up to at least 2 steps (so log(W) is never 0).
double warmup_gamma(const SchedulerConfig& s, int64_t step) {
  const int64_t warmup = std::max<int64_t>(2, s.warmup_num_steps);
  if (step >= warmup) return 1.0;
  if (s.warmup_type == "linear") return static_cast<double>(step) / warmup;
  return std::log(static_cast<double>(step + 1)) / std::log(static_cast<double>(warmup));
}

}  // namespace

double learning_rate(const SchedulerConfig& s, double base_lr, int64_t step, int64_t total_steps) {
  if (s.type.empty()) return base_lr;
  const int64_t total = s.total_num_steps > 0 ? s.total_num_steps : total_steps;
  const int64_t warmup = std::max<int64_t>(2, s.warmup_num_steps);
  if (s.type == "WarmupCosineLR") {
    // Ratios of the optimizer's lr: a warm-up from warmup_min_ratio to 1, then a cosine
    // down to cos_min_ratio at total_num_steps (held there after, where DeepSpeed's cosine
    // would rise again).
    if (step < warmup) {
      return base_lr * (s.warmup_min_ratio + (1.0 - s.warmup_min_ratio) * warmup_gamma(s, step));
    }
    const double done = static_cast<double>(step - warmup + 1);
    const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, done / span)));
    return base_lr * std::max(0.0, s.cos_min_ratio + (1.0 - s.cos_min_ratio) * cosine);
  }
  const double max_lr = s.warmup_max_lr;
  const double min_lr = s.warmup_min_lr;
  if (s.type == "WarmupLR" || step < warmup) {
    return min_lr + (max_lr - min_lr) * warmup_gamma(s, step);
  }
  // WarmupDecayLR after warm-up: linear decay of the warm-up's gain to 0 at total steps.
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double gamma = std::max(0.0, static_cast<double>(total - step) / span);
  return min_lr + (max_lr - min_lr) * gamma;
}

double lr_for_update(const SchedulerConfig& s, double base_lr, int64_t update,
                     int64_t total_steps) {
  if (s.type.empty()) return base_lr;
  if (update == 0) return s.type == "WarmupCosineLR" ? 0.0 : s.warmup_min_lr;
  return learning_rate(s, base_lr, update - 1, total_steps);
}

}  // namespace tessera::engine
