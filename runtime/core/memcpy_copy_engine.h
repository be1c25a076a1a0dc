// The CPU twin of a device's copy engine: "device" memory is host memory, each direction's
// copies are memcpys run in order by a worker thread of their own, so copies really overlap
// the caller's work and a missing wait shows up as a wrong value, as it would on a GPU. Tests
// slow the copies down (copy_delay) to widen every race, and make one fail
// (inject_copy_failure_after) to check that the failure reaches the waiter.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "runtime/core/copy_engine.h"

namespace tessera {

class MemcpyCopyEngine final : public CopyEngine {
 public:
  struct Options {
    std::chrono::microseconds copy_delay{0};  // slept before each copy
    // mlock the host allocations (offload_optimizer.pin_memory), so the locked-memory limit
    // applies as it does to page-locked memory on a GPU machine.
    bool lock_host = false;
  };
  MemcpyCopyEngine() : MemcpyCopyEngine(Options{}) {}
  // Fault injection for tests: the n-th copy queued from now on, by any engine of the
  // process, fails with IoError (n = 0: none).
  static void inject_copy_failure_after(int64_t n);
  explicit MemcpyCopyEngine(Options options);
  ~MemcpyCopyEngine() override;  // finishes the queued copies

  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "memcpy"; }
  void* allocate_host(size_t bytes) override;
  void free_host(void* ptr, size_t bytes) override;
  CopyTicket copy_to_host(void* host_dst, const void* device_src, size_t bytes) override;
  CopyTicket copy_to_device(void* device_dst, const void* host_src, size_t bytes) override;
  void wait(CopyTicket ticket) override;
  void synchronize() override;
  CopyStats stats() const override;

 private:
  struct Copy {
    void* dst;
    const void* src;
    size_t bytes;
    bool fail;
  };
  struct Lane {  // one direction: a queue and the thread that drains it
    std::deque<Copy> queue;
    int64_t queued = 0, done = 0;
    std::exception_ptr error;  // the first failure; later copies of the lane are skipped
    std::thread worker;
  };
  CopyTicket enqueue(CopyDirection direction, void* dst, const void* src, size_t bytes);
  void drain(Lane& lane);
  Lane& lane(CopyDirection d) { return d == CopyDirection::ToHost ? to_host_ : to_device_; }

  Options options_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  CopyStats stats_;
  Lane to_host_, to_device_;
};

}  // namespace tessera
