// CompletionWork: a Work completed by whoever runs the operation (a progress thread, the
// last rank to arrive), with the failure stored as a message and rethrown on wait().
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

class CompletionWork : public Work {
 public:
  // `what` names the operation in error messages; `timeout` is the op's resolved timeout,
  // used by wait() when called with kDefaultTimeout.
  CompletionWork(std::string what, Timeout timeout);

  bool is_completed() override;
  void wait(Timeout timeout = kDefaultTimeout) override;

  void mark_done();
  void mark_failed(std::string message);
  // Called when wait() gives up, before it throws; a backend uses it to abort its world so the
  // peers stop waiting too.
  void on_wait_timeout(std::function<void(const std::string&)> fn);

  const std::string& what() const { return what_; }
  Timeout timeout() const { return timeout_; }

 private:
  const std::string what_;
  const Timeout timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::optional<std::string> error_;
  std::function<void(const std::string&)> on_wait_timeout_;
};

// A Work that is complete when it is created (world size 1, zero elements).
std::shared_ptr<CompletionWork> completed_work(std::string what);

}  // namespace tessera::parallel
