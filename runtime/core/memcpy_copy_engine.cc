#include "runtime/core/memcpy_copy_engine.h"

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"

namespace tessera {
namespace {

constexpr size_t kHostAlign = 4096;

std::atomic<int64_t> g_copies_until_failure{0};  // 0: no failure armed

// Whether the copy being queued is the one armed to fail.
bool take_injected_failure() {
  int64_t left = g_copies_until_failure.load();
  while (left > 0) {
    if (g_copies_until_failure.compare_exchange_weak(left, left - 1)) return left == 1;
  }
  return false;
}

}  // namespace

void MemcpyCopyEngine::inject_copy_failure_after(int64_t n) { g_copies_until_failure = n; }

MemcpyCopyEngine::MemcpyCopyEngine(Options options) : options_(options) {
  to_host_.worker = std::thread([this] { drain(to_host_); });
  to_device_.worker = std::thread([this] { drain(to_device_); });
}

MemcpyCopyEngine::~MemcpyCopyEngine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  to_host_.worker.join();
  to_device_.worker.join();
}

void* MemcpyCopyEngine::allocate_host(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + kHostAlign - 1) / kHostAlign * kHostAlign;
  void* ptr = std::aligned_alloc(kHostAlign, rounded);
  if (ptr == nullptr) {
    TS_THROW(Error, "host memory of {} for the copy engine could not be allocated",
             format_bytes(static_cast<int64_t>(bytes)));
  }
  if (options_.lock_host && mlock(ptr, rounded) != 0) {
    const int err = errno;
    std::free(ptr);
    TS_THROW(Error,
             "locking {} of host memory failed ({}): raise the locked-memory limit (ulimit -l) or "
             "set offload_optimizer.pin_memory false",
             format_bytes(static_cast<int64_t>(bytes)), std::strerror(err));
  }
  std::memset(ptr, 0, rounded);  // zero-filled, and every page faulted in now
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.host_bytes += static_cast<int64_t>(bytes);
  stats_.host_peak_bytes = std::max(stats_.host_peak_bytes, stats_.host_bytes);
  return ptr;
}

void MemcpyCopyEngine::free_host(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  std::free(ptr);  // (free unlocks: the pages go back to the system)
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.host_bytes -= static_cast<int64_t>(bytes);
}

CopyTicket MemcpyCopyEngine::copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  return enqueue(CopyDirection::ToHost, host_dst, device_src, bytes);
}

CopyTicket MemcpyCopyEngine::copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  return enqueue(CopyDirection::ToDevice, device_dst, host_src, bytes);
}

CopyTicket MemcpyCopyEngine::enqueue(CopyDirection direction, void* dst, const void* src,
                                     size_t bytes) {
  CopyTicket ticket;
  ticket.direction = direction;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Lane& l = lane(direction);
    const bool fail = take_injected_failure();
    l.queue.push_back({dst, src, bytes, fail});
    ticket.sequence = ++l.queued;
    if (direction == CopyDirection::ToHost) {
      ++stats_.to_host_copies;
      stats_.to_host_bytes += static_cast<int64_t>(bytes);
    } else {
      ++stats_.to_device_copies;
      stats_.to_device_bytes += static_cast<int64_t>(bytes);
    }
  }
  changed_.notify_all();
  return ticket;
}

void MemcpyCopyEngine::drain(Lane& l) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !l.queue.empty(); });
    if (l.queue.empty()) return;  // stopping, and nothing left to copy
    const Copy copy = l.queue.front();
    const bool skip = l.error != nullptr;
    lock.unlock();
    std::exception_ptr error;
    if (!skip) {
      if (options_.copy_delay.count() > 0) std::this_thread::sleep_for(options_.copy_delay);
      try {
        if (copy.fail) {
          TS_THROW(IoError, "copy of {} bytes {} failed: Input/output error (injected)", copy.bytes,
                   &l == &to_host_ ? "to the host" : "to the device");
        }
        if (copy.bytes > 0) std::memcpy(copy.dst, copy.src, copy.bytes);
      } catch (...) {
        error = std::current_exception();
      }
    }
    lock.lock();
    if (error != nullptr) l.error = error;
    l.queue.pop_front();
    ++l.done;
    changed_.notify_all();
  }
}

void MemcpyCopyEngine::wait(CopyTicket ticket) {
  if (ticket.sequence == 0) return;
  std::unique_lock<std::mutex> lock(mutex_);
  Lane& l = lane(ticket.direction);
  TS_CHECK(ticket.sequence <= l.queued, "waiting for copy {} of {} queued", ticket.sequence,
           l.queued);
  changed_.wait(lock, [&] { return l.done >= ticket.sequence; });
  if (l.error != nullptr) std::rethrow_exception(l.error);
}

void MemcpyCopyEngine::synchronize() {
  int64_t to_host = 0, to_device = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    to_host = to_host_.queued;
    to_device = to_device_.queued;
  }
  wait({CopyDirection::ToHost, to_host});
  wait({CopyDirection::ToDevice, to_device});
}

CopyStats MemcpyCopyEngine::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace tessera
