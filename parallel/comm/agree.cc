#include "parallel/comm/agree.h"

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "runtime/core/error.h"

namespace tessera::parallel {

namespace {

// What a failing rank reports, so its peers can throw the same kind.
enum Kind : int32_t { kOk = 0, kInvalidArgument = 1, kCommError = 2, kOtherError = 3 };

}  // namespace

void run_agreed(ProcessGroup& group, const std::function<void()>& fn) {
  std::exception_ptr error;
  std::string message;
  int32_t kind = kOk;
  try {
    fn();
  } catch (const InvalidArgument& e) {
    error = std::current_exception();
    message = e.what();
    kind = kInvalidArgument;
  } catch (const CommError& e) {
    error = std::current_exception();
    message = e.what();
    kind = kCommError;
  } catch (const std::exception& e) {
    error = std::current_exception();
    message = e.what();
    kind = kOtherError;
  } catch (...) {
    error = std::current_exception();
    message = "unknown exception";
    kind = kOtherError;
  }
  const int world = group.size();
  // {kind, message bytes} from every rank.
  const int32_t mine[2] = {kind, static_cast<int32_t>(message.size())};
  std::vector<int32_t> all(2 * static_cast<size_t>(world));
  try {
    group.all_gather(mine, all.data(), 2, DType::I32)->wait();
  } catch (...) {
    // The group itself failed (often because fn's own collectives did): the local cause, if
    // any, says more than the abort.
    if (error) std::rethrow_exception(error);
    throw;
  }
  int root = -1;
  for (int r = 0; r < world && root < 0; ++r) {
    if (all[2 * r] != kOk) root = r;
  }
  if (root < 0) return;
  const size_t bytes = static_cast<size_t>(all[2 * root + 1]);
  std::vector<int32_t> words((bytes + sizeof(int32_t) - 1) / sizeof(int32_t), 0);
  if (group.rank() == root && bytes > 0) std::memcpy(words.data(), message.data(), bytes);
  if (!words.empty()) {
    BroadcastOptions opts;
    opts.root = root;
    try {
      group.broadcast(words.data(), words.size(), DType::I32, opts)->wait();
    } catch (...) {
      if (error) std::rethrow_exception(error);
      throw;
    }
  }
  if (group.rank() == root) std::rethrow_exception(error);
  std::string text(bytes, '\0');
  if (bytes > 0) std::memcpy(text.data(), words.data(), bytes);
  switch (all[2 * root]) {
    case kInvalidArgument:
      throw InvalidArgument(text);
    case kCommError:
      throw CommError(text);
    default:
      throw Error(text);
  }
}

}  // namespace tessera::parallel
