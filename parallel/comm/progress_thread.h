// One worker thread per (group, rank) that runs that rank's operations in issue order, so a
// collective proceeds while the caller computes (e.g. gradient buckets during backward).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace tessera::parallel {

class ProgressThread {
 public:
  ProgressThread();
  // Runs what is still queued, then joins. Queued operations are bounded by their timeouts.
  ~ProgressThread();
  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;

  // Tasks must not throw; each one reports through its own Work.
  void post(std::function<void()> task);

  // Nothing queued or running. Only meaningful to the single thread that posts: it lets that
  // thread run a small operation inline without overtaking anything it posted earlier.
  bool idle();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  bool running_ = false;
  std::thread thread_;
};

}  // namespace tessera::parallel
