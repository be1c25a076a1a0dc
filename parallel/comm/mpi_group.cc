#include "parallel/comm/mpi_group.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel/comm/progress_thread.h"
#include "parallel/comm/reduce_kernels.h"
#include "parallel/comm/work.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace tessera::parallel {
namespace {

using Clock = std::chrono::steady_clock;
// MPI counts are int; larger messages go in pieces of this many elements.
constexpr size_t kMaxMpiCount = size_t{1} << 30;
constexpr auto kWaitGrace = std::chrono::seconds(1);
// Up to this size a collective issued while the group is idle runs inline on the caller's
// thread: the hand-off to the progress thread would cost more than the MPI call itself, and
// there is nothing to overlap with.
constexpr size_t kInlineBytes = 64 << 10;

// The custom error handler only records the message: throwing through MPI's C frames is
// undefined, so the call returns its code and check_mpi turns it into CommError.
thread_local std::string last_mpi_error;

void record_mpi_error(MPI_Comm*, int* code, ...) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(*code, text, &length);
  last_mpi_error.assign(text, length);
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  std::string message = last_mpi_error;
  if (message.empty()) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    message.assign(text, length);
  }
  last_mpi_error.clear();
  TS_THROW(CommError, "mpi: {} failed: {}", call, message);
}

std::string_view thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

void check_thread_level() {
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    TS_THROW(CommError,
             "mpi: the MPI library provides {} but tessera's MPI backend needs MPI_THREAD_MULTIPLE "
             "(collectives "
             "run on per-group progress threads); initialise MPI with "
             "MPI_Init_thread(MPI_THREAD_MULTIPLE) and use "
             "an MPI built with thread support",
             thread_level_name(provided));
  }
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F16:
      return MPI_UINT16_T;  // moved as bits; reductions are staged through f32
    case DType::BF16:
      return MPI_UINT16_T;
    case DType::I32:
      return MPI_INT32_T;
    case DType::U16:
      return MPI_UINT16_T;
    case DType::F64:
      return MPI_DOUBLE;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Max ? MPI_MAX : MPI_SUM; }

int as_int_count(size_t count, std::string_view op_name) {
  TS_CHECK(count <= static_cast<size_t>(INT_MAX), "{}: {} elements exceed MPI's int counts",
           op_name, count);
  return static_cast<int>(count);
}

const char* at(const void* p, size_t elements, size_t elem_size) {
  return static_cast<const char*>(p) + elements * elem_size;
}
char* at(void* p, size_t elements, size_t elem_size) {
  return static_cast<char*>(p) + elements * elem_size;
}

bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto* pa = static_cast<const char*>(a);
  const auto* pb = static_cast<const char*>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

// Ends the job when an operation outlives its deadline, whether or not anyone waits on it: a
// thread blocked inside MPI (the progress thread, or the caller for an inline op) cannot be
// interrupted any other way. One per process, never destroyed, so it outlives every group.
class Watchdog {
 public:
  static Watchdog& instance() {
    static Watchdog* watchdog = new Watchdog();
    return *watchdog;
  }

  uint64_t arm(Clock::time_point deadline, std::string what) {
    // No wake-up here: the watchdog polls, so arming costs a lock, not a context switch.
    std::lock_guard lock(mutex_);
    const uint64_t id = next_id_++;
    armed_.emplace(id, Entry{deadline, std::move(what)});
    return id;
  }

  void disarm(uint64_t id) {
    std::lock_guard lock(mutex_);
    armed_.erase(id);
  }

 private:
  struct Entry {
    Clock::time_point deadline;
    std::string what;
  };

  Watchdog() {
    std::thread([this] { run(); }).detach();
  }

  // Timeouts are seconds long, so checking a few times a second is precise enough.
  void run() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      std::unique_lock lock(mutex_);
      const auto now = Clock::now();
      for (const auto& [id, entry] : armed_) {
        if (now < entry.deadline) continue;
        const std::string message = fmt::format(
            "{} did not complete within its timeout (TESSERA_COMM_TIMEOUT_S)", entry.what);
        lock.unlock();
        mpi_abort(message);
      }
    }
  }

  std::mutex mutex_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, Entry> armed_;
};

// A send or recv: posted as MPI_Isend/MPI_Irecv on the progress thread (so it is ordered
// after earlier operations), then completed by whoever waits or polls.
class MpiP2PWork final : public Work {
 public:
  MpiP2PWork(std::string what, Timeout timeout) : what_(std::move(what)), timeout_(timeout) {}

  void posted(MPI_Request request) {
    {
      std::lock_guard lock(mutex_);
      request_ = request;
      state_ = State::Posted;
    }
    cv_.notify_all();
  }
  void failed(std::string message) {
    {
      std::lock_guard lock(mutex_);
      error_ = std::move(message);
      state_ = State::Done;
    }
    cv_.notify_all();
  }

  bool is_completed() override {
    std::lock_guard lock(mutex_);
    return test_locked();
  }

  const std::string& what() const { return what_; }

  void wait(Timeout timeout) override {
    const Timeout limit = timeout == kDefaultTimeout ? timeout_ : timeout;
    const auto deadline = Clock::now() + limit;
    std::unique_lock lock(mutex_);
    for (;;) {
      if (test_locked()) break;
      if (Clock::now() >= deadline) {
        const std::string message = fmt::format(
            "{} did not complete within {:.1f} s (TESSERA_COMM_TIMEOUT_S or the op's timeout)",
            what_, std::chrono::duration<double>(limit).count());
        lock.unlock();
        mpi_abort(message);
      }
      if (state_ == State::Queued) {
        cv_.wait_until(lock, deadline);
      } else {
        // Polling keeps the MPI progress engine turning without a thread parked inside MPI.
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
      }
    }
    if (!error_.empty()) TS_THROW(CommError, "{}", error_);
  }

 private:
  enum class State { Queued, Posted, Done };

  bool test_locked() {
    if (state_ == State::Posted) {
      int done = 0;
      const int rc = MPI_Test(&request_, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        try {
          check_mpi(rc, "MPI_Test");
        } catch (const CommError& e) {
          error_ = fmt::format("{}: {}", what_, e.what());
        }
        done = 1;
      }
      if (done) state_ = State::Done;
    }
    return state_ == State::Done;
  }

  const std::string what_;
  const Timeout timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  State state_ = State::Queued;
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::string error_;
};

class MpiProcessGroup final : public ProcessGroup {
 public:
  // Takes ownership of comm.
  explicit MpiProcessGroup(MPI_Comm comm) : comm_(comm) {
    MPI_Errhandler handler;
    check_mpi(MPI_Comm_create_errhandler(record_mpi_error, &handler), "MPI_Comm_create_errhandler");
    check_mpi(MPI_Comm_set_errhandler(comm_, handler), "MPI_Comm_set_errhandler");
    MPI_Errhandler_free(&handler);
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  ~MpiProcessGroup() override {
    progress_.reset();  // runs what is queued first
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend_name() const override { return "mpi"; }

  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    auto result = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
    submit("split", kDefaultTimeout, 0, [=, this] {
      check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, result.get()),
                "MPI_Comm_split");
    })->wait();
    if (*result == MPI_COMM_NULL) return nullptr;
    return std::make_shared<MpiProcessGroup>(*result);
  }

  WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                     const AllreduceOptions& opts) override {
    detail::check_reducible("all_reduce", dtype);
    return submit("all_reduce", opts.timeout, count * dtype_size(dtype), [=, this] {
      if (dtype == DType::F32) {
        for (size_t begin = 0; begin < count; begin += kMaxMpiCount) {
          const size_t n = std::min(kMaxMpiCount, count - begin);
          const void* src = send == recv ? MPI_IN_PLACE : at(send, begin, 4);
          check_mpi(MPI_Allreduce(src, at(recv, begin, 4), static_cast<int>(n), MPI_FLOAT,
                                  mpi_op(opts.op), comm_),
                    "MPI_Allreduce");
        }
        if (opts.op == ReduceOp::Avg) divide_f32(static_cast<float*>(recv), count, size_);
        return;
      }
      std::vector<float> staged(count);
      convert_to_f32(send, staged.data(), count, dtype);
      for (size_t begin = 0; begin < count; begin += kMaxMpiCount) {
        const size_t n = std::min(kMaxMpiCount, count - begin);
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, staged.data() + begin, static_cast<int>(n), MPI_FLOAT,
                                mpi_op(opts.op), comm_),
                  "MPI_Allreduce");
      }
      if (opts.op == ReduceOp::Avg) divide_f32(staged.data(), count, size_);
      convert_from_f32(staged.data(), recv, count, dtype);
    });
  }

  WorkPtr reduce_scatter_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                           DType dtype, const ReduceScatterOptions& opts) override {
    detail::check_reducible("reduce_scatter", dtype);
    detail::check_counts("reduce_scatter", recv_counts, size_);
    const size_t total = detail::total_count(recv_counts);
    as_int_count(total, "reduce_scatter");
    std::vector<int> counts(recv_counts.begin(), recv_counts.end());
    return submit("reduce_scatter", opts.timeout, total * dtype_size(dtype), [=, this] {
      const int mine = counts[rank_];
      const bool equal =
          std::all_of(counts.begin(), counts.end(), [&](int c) { return c == counts[0]; });
      auto run = [&](const void* src, float* dst) {
        if (equal) {
          check_mpi(MPI_Reduce_scatter_block(src, dst, mine, MPI_FLOAT, mpi_op(opts.op), comm_),
                    "MPI_Reduce_scatter_block");
        } else {
          check_mpi(MPI_Reduce_scatter(src, dst, counts.data(), MPI_FLOAT, mpi_op(opts.op), comm_),
                    "MPI_Reduce_scatter");
        }
      };
      // MPI forbids overlapping send and recv buffers, and 16-bit data is reduced in f32, so
      // those cases go through a staging buffer; the result lands at its front.
      if (dtype == DType::F32 && !overlaps(send, total * 4, recv, static_cast<size_t>(mine) * 4)) {
        run(send, static_cast<float*>(recv));
        if (opts.op == ReduceOp::Avg) divide_f32(static_cast<float*>(recv), mine, size_);
        return;
      }
      std::vector<float> staged(std::max<size_t>(total, 1));
      convert_to_f32(send, staged.data(), total, dtype);
      run(MPI_IN_PLACE, staged.data());
      if (opts.op == ReduceOp::Avg) divide_f32(staged.data(), mine, size_);
      convert_from_f32(staged.data(), recv, mine, dtype);
    });
  }

  WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                       DType dtype, const AllgatherOptions& opts) override {
    detail::check_counts("all_gather", recv_counts, size_);
    const size_t total = detail::total_count(recv_counts);
    as_int_count(total, "all_gather");
    std::vector<int> counts(recv_counts.begin(), recv_counts.end());
    return submit("all_gather", opts.timeout, total * dtype_size(dtype), [=, this] {
      const size_t e = dtype_size(dtype);
      std::vector<int> displs(size_, 0);
      for (int j = 1; j < size_; ++j) displs[j] = displs[j - 1] + counts[j - 1];
      const bool in_place = send == at(recv, displs[rank_], e);
      const bool equal =
          std::all_of(counts.begin(), counts.end(), [&](int c) { return c == counts[0]; });
      if (equal) {
        check_mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : send, counts[0], mpi_type(dtype), recv,
                                counts[0], mpi_type(dtype), comm_),
                  "MPI_Allgather");
      } else {
        check_mpi(MPI_Allgatherv(in_place ? MPI_IN_PLACE : send, counts[rank_], mpi_type(dtype),
                                 recv, counts.data(), displs.data(), mpi_type(dtype), comm_),
                  "MPI_Allgatherv");
      }
    });
  }

  WorkPtr broadcast(void* buf, size_t count, DType dtype, const BroadcastOptions& opts) override {
    detail::check_rank("broadcast", "root", opts.root, size_);
    return submit("broadcast", opts.timeout, count * dtype_size(dtype), [=, this] {
      const size_t e = dtype_size(dtype);
      for (size_t begin = 0; begin < count; begin += kMaxMpiCount) {
        const size_t n = std::min(kMaxMpiCount, count - begin);
        check_mpi(
            MPI_Bcast(at(buf, begin, e), static_cast<int>(n), mpi_type(dtype), opts.root, comm_),
            "MPI_Bcast");
      }
    });
  }

  WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                 const ReduceOptions& opts) override {
    detail::check_reducible("reduce", dtype);
    detail::check_rank("reduce", "root", opts.root, size_);
    return submit("reduce", opts.timeout, count * dtype_size(dtype), [=, this] {
      const bool root = rank_ == opts.root;
      std::vector<float> staged;
      const float* src = static_cast<const float*>(send);
      float* dst = static_cast<float*>(recv);
      if (dtype != DType::F32) {
        staged.resize(count);
        convert_to_f32(send, staged.data(), count, dtype);
        src = dst = staged.data();
      }
      for (size_t begin = 0; begin < count; begin += kMaxMpiCount) {
        const int n = static_cast<int>(std::min(kMaxMpiCount, count - begin));
        const void* s = root && src == dst ? MPI_IN_PLACE : static_cast<const void*>(src + begin);
        check_mpi(MPI_Reduce(s, root ? dst + begin : nullptr, n, MPI_FLOAT, mpi_op(opts.op),
                             opts.root, comm_),
                  "MPI_Reduce");
      }
      if (!root) return;
      if (opts.op == ReduceOp::Avg) divide_f32(dst, count, size_);
      if (dtype != DType::F32) convert_from_f32(staged.data(), recv, count, dtype);
    });
  }

  WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
               const SendRecvOptions& opts) override {
    detail::check_rank("send", "destination", dst, size_);
    const int n = as_int_count(count, "send");
    const auto what = detail::p2p_description(P2POp::Kind::Send, dst, opts.what, opts.tag);
    return submit_p2p(what, opts, [=, this] {
      MPI_Request request;
      check_mpi(MPI_Isend(buf, n, mpi_type(dtype), dst, opts.tag, comm_, &request), "MPI_Isend");
      return request;
    });
  }

  WorkPtr recv(void* buf, size_t count, DType dtype, int src,
               const SendRecvOptions& opts) override {
    detail::check_rank("recv", "source", src, size_);
    const int n = as_int_count(count, "recv");
    const auto what = detail::p2p_description(P2POp::Kind::Recv, src, opts.what, opts.tag);
    return submit_p2p(what, opts, [=, this] {
      MPI_Request request;
      check_mpi(MPI_Irecv(buf, n, mpi_type(dtype), src, opts.tag, comm_, &request), "MPI_Irecv");
      return request;
    });
  }

  // The interface's default: each op is an MPI_Isend/MPI_Irecv, which never blocks, so the
  // progress thread posts the whole batch whatever its order and no neighbour can deadlock.
  // Counts are checked first so that a bad one cannot leave half a batch posted.
  WorkPtr batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts) override {
    for (const P2POp& op : ops) as_int_count(op.count, "batch_send_recv");
    return ProcessGroup::batch_send_recv(ops, opts);
  }

  WorkPtr barrier(const BarrierOptions& opts) override {
    return submit("barrier", opts.timeout, 0,
                  [this] { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); });
  }

  void abort(std::string_view reason) override {
    mpi_abort(fmt::format("rank {}: {}", rank_, reason));
  }

 private:
  template <typename Body>
  WorkPtr submit(std::string_view what, Timeout timeout, size_t bytes, Body body) {
    const Timeout limit = resolve_timeout(timeout);
    auto work =
        std::make_shared<CompletionWork>(fmt::format("mpi rank {}: {}", rank_, what),
                                         std::chrono::duration_cast<Timeout>(limit + kWaitGrace));
    // The progress thread may be stuck inside MPI waiting for a dead or absent peer; nothing
    // can free it, so a timeout ends the job rather than leaving every rank hanging.
    work->on_wait_timeout([](const std::string& message) { mpi_abort(message); });
    const uint64_t watch = Watchdog::instance().arm(Clock::now() + limit, work->what());
    auto run = [work, watch, body = std::move(body)]() mutable {
      try {
        body();
        work->mark_done();
      } catch (const std::exception& e) {
        work->mark_failed(e.what());
      }
      Watchdog::instance().disarm(watch);
    };
    if (bytes <= kInlineBytes && progress_->idle()) {
      run();
    } else {
      progress_->post(std::move(run));
    }
    return work;
  }

  template <typename Post>
  WorkPtr submit_p2p(std::string_view what, const SendRecvOptions& opts, Post post) {
    auto work = std::make_shared<MpiP2PWork>(fmt::format("mpi rank {}: {}", rank_, what),
                                             resolve_timeout(opts.timeout));
    progress_->post([work, post = std::move(post)]() mutable {
      try {
        work->posted(post());
      } catch (const std::exception& e) {
        work->failed(fmt::format("{}: {}", work->what(), e.what()));
      }
    });
    return work;
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::unique_ptr<ProgressThread> progress_ = std::make_unique<ProgressThread>();
};

}  // namespace

bool mpi_compiled() { return true; }

void mpi_init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = MPI_THREAD_SINGLE;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  }
  check_thread_level();
}

bool mpi_initialized() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

void mpi_finalize() {
  if (mpi_initialized()) MPI_Finalize();
}

ProcessGroupPtr make_mpi_world() {
  TS_CHECK(mpi_initialized(), "make_mpi_world: call mpi_init first");
  check_thread_level();
  MPI_Comm comm;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  return std::make_shared<MpiProcessGroup>(comm);
}

void mpi_abort(std::string_view reason, int exit_code) {
  spdlog::critical("aborting the MPI job: {}", reason);
  spdlog::default_logger()->flush();
  if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace tessera::parallel
