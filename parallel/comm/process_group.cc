#include "parallel/comm/process_group.h"

#include <algorithm>
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

// ---- batch_send_recv ----

namespace {

using Clock = std::chrono::steady_clock;

// The Work of a batch posted op by op: complete when every op is, waited on within one
// deadline for the whole batch.
class BatchWork final : public Work {
 public:
  BatchWork(std::vector<WorkPtr> works, Timeout timeout)
      : works_(std::move(works)), timeout_(timeout) {}

  bool is_completed() override {
    return std::all_of(works_.begin(), works_.end(), [](auto& w) { return w->is_completed(); });
  }

  // In op order; the first op still pending at the deadline reports the timeout itself (and
  // its backend aborts the group), so the message names that op.
  void wait(Timeout timeout) override {
    const auto deadline = Clock::now() + (timeout == kDefaultTimeout ? timeout_ : timeout);
    for (auto& work : works_) {
      // Never kDefaultTimeout (-1 ms): that would mean "the op's full timeout" again.
      const auto left = std::chrono::duration_cast<Timeout>(deadline - Clock::now());
      work->wait(std::max(left, Timeout{0}));
    }
  }

 private:
  const std::vector<WorkPtr> works_;
  const Timeout timeout_;
};

}  // namespace

WorkPtr ProcessGroup::batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts) {
  detail::check_p2p_batch(ops, rank(), size());
  const Timeout timeout = resolve_timeout(opts.timeout);
  if (ops.empty()) return completed_work("batch_send_recv of no ops");
  // Everything is posted before anyone waits: that is what makes opposite orders on two
  // neighbours safe, since send() and recv() themselves never block.
  std::vector<WorkPtr> works;
  works.reserve(ops.size());
  for (const P2POp& op : ops) {
    const SendRecvOptions one{opts.tag, opts.timeout, op.what.empty() ? opts.what : op.what};
    works.push_back(op.kind == P2POp::Kind::Send ? send(op.buf, op.count, op.dtype, op.peer, one)
                                                 : recv(op.buf, op.count, op.dtype, op.peer, one));
  }
  return std::make_shared<BatchWork>(std::move(works), timeout);
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

std::string p2p_description(P2POp::Kind kind, int peer, std::string_view what, int tag) {
  const bool is_send = kind == P2POp::Kind::Send;
  std::string text = is_send ? "send" : "recv";
  if (!what.empty()) text += fmt::format(" of {}", what);
  text += fmt::format(" ({} rank {}", is_send ? "to" : "from", peer);
  if (tag != 0) text += fmt::format(", tag {}", tag);
  return text + ")";
}

namespace {
// "op 2 (recv of <what>)": how a batch's checks name the op at fault.
std::string batch_op_label(size_t index, const P2POp& op) {
  const std::string_view kind = op.kind == P2POp::Kind::Send ? "send" : "recv";
  if (op.what.empty()) return fmt::format("op {} ({})", index, kind);
  return fmt::format("op {} ({} of {})", index, kind, op.what);
}
}  // namespace

void check_p2p_batch(std::span<const P2POp> ops, int rank, int size) {
  constexpr std::string_view kOp = "batch_send_recv";
  // Ops with this rank as the peer, in batch order: the k-th send pairs with the k-th recv.
  std::vector<size_t> self_sends, self_recvs;
  for (size_t i = 0; i < ops.size(); ++i) {
    const P2POp& op = ops[i];
    const std::string label = batch_op_label(i, op);
    check_rank(kOp, fmt::format("{} peer", label), op.peer, size);
    TS_CHECK(op.buf != nullptr || op.count == 0, "{}: {} has a null buffer for {} elements", kOp,
             label, op.count);
    if (op.peer == rank) (op.kind == P2POp::Kind::Send ? self_sends : self_recvs).push_back(i);
  }
  // An unpaired op with one's own rank would wait forever (nobody else can match it).
  for (size_t k = self_sends.size(); k < self_recvs.size(); ++k) {
    TS_THROW(InvalidArgument,
             "{}: {} receives from its own rank {} but no send to rank {} in this batch matches "
             "it; pair every receive from self with a send to self in the same batch",
             kOp, batch_op_label(self_recvs[k], ops[self_recvs[k]]), rank, rank);
  }
  for (size_t k = self_recvs.size(); k < self_sends.size(); ++k) {
    TS_THROW(InvalidArgument,
             "{}: {} sends to its own rank {} but no receive from rank {} in this batch matches "
             "it; pair every send to self with a receive from self in the same batch",
             kOp, batch_op_label(self_sends[k], ops[self_sends[k]]), rank, rank);
  }
  for (size_t k = 0; k < self_sends.size(); ++k) {
    const P2POp& s = ops[self_sends[k]];
    const P2POp& r = ops[self_recvs[k]];
    const size_t send_bytes = s.count * dtype_size(s.dtype);
    const size_t recv_bytes = r.count * dtype_size(r.dtype);
    TS_CHECK(send_bytes == recv_bytes,
             "{}: {} sends {} bytes to its own rank but {}, the receive it pairs with, expects {}",
             kOp, batch_op_label(self_sends[k], s), send_bytes, batch_op_label(self_recvs[k], r),
             recv_bytes);
  }
}

}  // namespace detail
}  // namespace tessera::parallel
