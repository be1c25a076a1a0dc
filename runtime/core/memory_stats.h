// Byte accounting per memory category (current and peak), the numbers behind the trainer's
// memory lines, ZeRO's per-rank checks and the estimator. Each rank owns a tracker; a thread
// can make one current (thread ranks share a process but must not share counters).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera {

enum class MemCategory : uint8_t { Params, Grads, Optimizer, Activations, Comm, Other };
inline constexpr int kNumMemCategories = 6;

std::string_view mem_category_name(MemCategory c);

struct MemorySnapshot {
  std::array<int64_t, kNumMemCategories> current{};
  std::array<int64_t, kNumMemCategories> peak{};
  int64_t total_current = 0;
  int64_t total_peak = 0;

  int64_t current_of(MemCategory c) const { return current[static_cast<int>(c)]; }
  int64_t peak_of(MemCategory c) const { return peak[static_cast<int>(c)]; }
};

class MemoryTracker {
 public:
  void on_alloc(MemCategory c, int64_t bytes);
  void on_free(MemCategory c, int64_t bytes);
  MemorySnapshot snapshot() const;
  // Peaks restart from the current values (e.g. after setup, to measure the steady state).
  void reset_peaks();

  // The tracker new Storage is charged to on this thread: the one installed by
  // ScopedTracker, or the process-wide default.
  static MemoryTracker& current();
  static MemoryTracker& process_default();

 private:
  std::array<std::atomic<int64_t>, kNumMemCategories> current_{};
  std::array<std::atomic<int64_t>, kNumMemCategories> peak_{};
  std::atomic<int64_t> total_current_{0};
  std::atomic<int64_t> total_peak_{0};
};

// Makes `tracker` current on this thread for the scope (one per thread rank).
class ScopedTracker {
 public:
  explicit ScopedTracker(MemoryTracker& tracker);
  ~ScopedTracker();
  ScopedTracker(const ScopedTracker&) = delete;
  ScopedTracker& operator=(const ScopedTracker&) = delete;

 private:
  MemoryTracker* previous_;
};

// "params 1.2 GiB, grads ..." for log lines.
std::string format_bytes(int64_t bytes);
std::string format_memory(const MemorySnapshot& s);

// The process's resident set now (VmRSS of `status`), or 0 where it cannot be read. Before a
// run allocates, this is what its code and libraries hold: no tracker sees it, yet every
// process of a run carries it.
int64_t process_resident_bytes(const std::string& status = "/proc/self/status");

}  // namespace tessera
