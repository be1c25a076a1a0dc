#include "parallel/comm/process_group.h"

#include <numeric>
#include <vector>

#include "parallel/comm/work.h"
#include "runtime/core/error.h"
#include "runtime/core/settings.h"

namespace tessera::parallel {

TS_SETTING("TESSERA_COMM_TIMEOUT_S", "300",
           "Seconds a collective or point-to-point operation may wait for its peers before it "
           "fails with CommError and aborts the communicator (so no rank hangs forever).");

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Avg:
      return "avg";
    case ReduceOp::Max:
      return "max";
  }
  return "?";
}

Timeout default_comm_timeout() {
  const long seconds = setting_int("TESSERA_COMM_TIMEOUT_S");
  TS_CHECK(seconds > 0, "TESSERA_COMM_TIMEOUT_S={} must be a positive number of seconds", seconds);
  return std::chrono::seconds(seconds);
}

Timeout resolve_timeout(Timeout t) {
  if (t == kDefaultTimeout) return default_comm_timeout();
  TS_CHECK(t.count() > 0, "communicator timeout must be positive, got {} ms", t.count());
  return t;
}

WorkPtr ProcessGroup::reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                                     const ReduceScatterOptions& opts) {
  const std::vector<size_t> counts(static_cast<size_t>(size()), recv_count);
  return reduce_scatter_v(send, recv, counts, dtype, opts);
}

WorkPtr ProcessGroup::all_gather(const void* send, void* recv, size_t send_count, DType dtype,
                                 const AllgatherOptions& opts) {
  const std::vector<size_t> counts(static_cast<size_t>(size()), send_count);
  return all_gather_v(send, recv, counts, dtype, opts);
}

// ---- CompletionWork ----

CompletionWork::CompletionWork(std::string what, Timeout timeout)
    : what_(std::move(what)), timeout_(timeout) {}

bool CompletionWork::is_completed() {
  std::lock_guard lock(mutex_);
  return done_;
}

void CompletionWork::wait(Timeout timeout) {
  const Timeout limit = timeout == kDefaultTimeout ? timeout_ : timeout;
  std::unique_lock lock(mutex_);
  if (!cv_.wait_for(lock, limit, [&] { return done_; })) {
    const std::string message = fmt::format(
        "{} did not complete within {:.1f} s (TESSERA_COMM_TIMEOUT_S or the op's timeout)", what_,
        limit.count() / 1000.0);
    auto hook = on_wait_timeout_;
    lock.unlock();
    if (hook) hook(message);
    TS_THROW(CommError, "{}", message);
  }
  if (error_) TS_THROW(CommError, "{}", *error_);
}

void CompletionWork::mark_done() {
  {
    std::lock_guard lock(mutex_);
    if (done_) return;
    done_ = true;
  }
  cv_.notify_all();
}

void CompletionWork::mark_failed(std::string message) {
  {
    std::lock_guard lock(mutex_);
    if (done_) return;
    done_ = true;
    error_ = std::move(message);
  }
  cv_.notify_all();
}

void CompletionWork::on_wait_timeout(std::function<void(const std::string&)> fn) {
  std::lock_guard lock(mutex_);
  on_wait_timeout_ = std::move(fn);
}

std::shared_ptr<CompletionWork> completed_work(std::string what) {
  auto work = std::make_shared<CompletionWork>(std::move(what), Timeout{1});
  work->mark_done();
  return work;
}

// ---- argument checks ----

namespace detail {

bool is_reducible(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
}

void check_reducible(std::string_view op_name, DType dtype) {
  TS_CHECK(is_reducible(dtype), "{}: cannot reduce dtype {}; reductions take f32, f16 or bf16",
           op_name, dtype_name(dtype));
}

void check_rank(std::string_view op_name, std::string_view what, int rank, int size) {
  TS_CHECK(rank >= 0 && rank < size, "{}: {} {} is outside the group of {} ranks", op_name, what,
           rank, size);
}

void check_counts(std::string_view op_name, std::span<const size_t> counts, int size) {
  TS_CHECK(counts.size() == static_cast<size_t>(size),
           "{}: {} counts given for a group of {} ranks", op_name, counts.size(), size);
}

size_t total_count(std::span<const size_t> counts) {
  return std::accumulate(counts.begin(), counts.end(), size_t{0});
}

}  // namespace detail
}  // namespace tessera::parallel
