#include "runtime/core/memory_stats.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

namespace tessera {
namespace {
thread_local MemoryTracker* t_current = nullptr;

void raise_peak(std::atomic<int64_t>& peak, int64_t value) {
  int64_t seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}
}  // namespace

std::string_view mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::Params: return "params";
    case MemCategory::Grads: return "grads";
    case MemCategory::Optimizer: return "optimizer";
    case MemCategory::Activations: return "activations";
    case MemCategory::Comm: return "comm";
    case MemCategory::Other: return "other";
  }
  return "?";
}

void MemoryTracker::on_alloc(MemCategory c, int64_t bytes) {
  const int i = static_cast<int>(c);
  raise_peak(peak_[i], current_[i].fetch_add(bytes, std::memory_order_relaxed) + bytes);
  raise_peak(total_peak_, total_current_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
}

void MemoryTracker::on_free(MemCategory c, int64_t bytes) {
  current_[static_cast<int>(c)].fetch_sub(bytes, std::memory_order_relaxed);
  total_current_.fetch_sub(bytes, std::memory_order_relaxed);
}

MemorySnapshot MemoryTracker::snapshot() const {
  MemorySnapshot s;
  for (int i = 0; i < kNumMemCategories; ++i) {
    s.current[i] = current_[i].load(std::memory_order_relaxed);
    s.peak[i] = peak_[i].load(std::memory_order_relaxed);
  }
  s.total_current = total_current_.load(std::memory_order_relaxed);
  s.total_peak = total_peak_.load(std::memory_order_relaxed);
  return s;
}

void MemoryTracker::reset_peaks() {
  for (int i = 0; i < kNumMemCategories; ++i) peak_[i].store(current_[i].load());
  total_peak_.store(total_current_.load());
}

MemoryTracker& MemoryTracker::process_default() {
  static MemoryTracker tracker;
  return tracker;
}

MemoryTracker& MemoryTracker::current() {
  return t_current != nullptr ? *t_current : process_default();
}

ScopedTracker::ScopedTracker(MemoryTracker& tracker) : previous_(t_current) { t_current = &tracker; }
ScopedTracker::~ScopedTracker() { t_current = previous_; }

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

std::string format_memory(const MemorySnapshot& s) {
  std::string out;
  for (int i = 0; i < kNumMemCategories; ++i) {
    if (s.peak[i] == 0) continue;
    if (!out.empty()) out += ", ";
    out += fmt::format("{} {}", mem_category_name(static_cast<MemCategory>(i)),
                       format_bytes(s.current[i]));
  }
  out += fmt::format(" (total {}, peak {})", format_bytes(s.total_current),
                     format_bytes(s.total_peak));
  return out;
}

int64_t process_resident_bytes(const std::string& status) {
  std::ifstream in(status);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    int64_t kib = 0;
    if (fields >> kib) return kib * 1024;
  }
  return 0;
}

}  // namespace tessera
