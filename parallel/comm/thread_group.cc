#include "parallel/comm/thread_group.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "parallel/comm/progress_thread.h"
#include "parallel/comm/reduce_kernels.h"
#include "parallel/comm/work.h"
#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

using Clock = std::chrono::steady_clock;
// A Work's default wait outlives the progress thread's own deadline by this much, so the
// rank-level error (which names the missing ranks) is the one the caller sees.
constexpr auto kWaitGrace = std::chrono::seconds(1);
// Up to this size a collective issued while the rank's progress thread is idle runs on the
// caller's thread: the hand-off costs more than the copy, and there is little to overlap.
constexpr size_t kInlineBytes = 64 << 10;

enum class OpKind : uint8_t {
  AllReduce,
  ReduceScatter,
  AllGather,
  Broadcast,
  Reduce,
  Barrier,
  Split
};

std::string_view op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::AllReduce:
      return "all_reduce";
    case OpKind::ReduceScatter:
      return "reduce_scatter";
    case OpKind::AllGather:
      return "all_gather";
    case OpKind::Broadcast:
      return "broadcast";
    case OpKind::Reduce:
      return "reduce";
    case OpKind::Barrier:
      return "barrier";
    case OpKind::Split:
      return "split";
  }
  return "?";
}

// What every rank must agree on for one collective; compared after the first barrier so a
// mismatch fails loudly instead of corrupting memory.
struct OpDesc {
  OpKind kind = OpKind::Barrier;
  size_t count = 0;
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int root = 0;
  std::span<const size_t> counts;
};

class GroupContext;

// Everything split from one make_thread_world call; aborting it aborts all of its groups.
class ThreadWorld {
 public:
  void add(const std::shared_ptr<GroupContext>& context);
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

 private:
  std::mutex mutex_;
  std::atomic<bool> aborted_{false};
  std::string reason_;
  std::vector<std::weak_ptr<GroupContext>> contexts_;
};

struct P2PRequest {
  const void* send = nullptr;
  void* recv = nullptr;
  size_t bytes = 0;
  std::shared_ptr<CompletionWork> work;
};

// State shared by the ranks of one group.
class GroupContext {
 public:
  // Per-rank rendezvous slot; written only by its rank before the first barrier of an op and
  // read by peers until the op's last barrier.
  struct alignas(64) Slot {
    const void* send = nullptr;
    void* recv = nullptr;
    OpDesc desc;
    int color = 0;
    int key = 0;
    std::shared_ptr<GroupContext> new_context;  // set by a split's leader
  };

  GroupContext(int size, std::shared_ptr<ThreadWorld> world)
      : size_(size),
        world_(std::move(world)),
        slots_(size),
        arrived_generation_(size, 0),
        in_phase_(size, false) {}

  int size() const { return size_; }
  Slot& slot(int rank) { return slots_[rank]; }
  ThreadWorld& world() { return *world_; }
  const std::shared_ptr<ThreadWorld>& world_ptr() const { return world_; }

  // Generation-counted barrier. Spins briefly (collectives usually arrive close together),
  // then sleeps. Throws CommError when the world is aborted or the deadline passes; a timeout
  // aborts the world so no peer waits any longer.
  //
  // Between two barriers of one op a rank may read and write its peers' buffers (a "data
  // phase"). An aborted rank must not return to its caller, who may free those buffers, while a
  // peer is still in a data phase; so the abort path first waits for them to leave (they never
  // block, so this is short). `last` marks an op's final barrier, after which no phase follows.
  void arrive_and_wait(int rank, Clock::time_point deadline, OpKind kind, bool last) {
    std::unique_lock lock(mutex_);
    leave_phase_locked(rank);
    if (aborted_) {
      wait_for_phases_locked(lock);
      throw_if_aborted();
    }
    const uint64_t generation = generation_.load(std::memory_order_relaxed);
    arrived_generation_[rank] = generation + 1;
    if (++arrived_ == size_) {
      arrived_ = 0;
      generation_.store(generation + 1, std::memory_order_release);
      if (!last) enter_phase_locked(rank);
      lock.unlock();
      cv_.notify_all();
      return;
    }
    lock.unlock();
    bool passed = false;
    for (int i = 0; i < kSpins && !passed; ++i) {
      passed = generation_.load(std::memory_order_acquire) != generation;
      if (!passed) std::this_thread::yield();
    }
    lock.lock();
    if (!passed) {
      cv_.wait_until(lock, deadline, [&] {
        return generation_.load(std::memory_order_relaxed) != generation || aborted_;
      });
      passed = generation_.load(std::memory_order_relaxed) != generation;
    }
    if (passed) {
      if (!last) enter_phase_locked(rank);
      return;
    }
    if (aborted_) {
      wait_for_phases_locked(lock);
      throw_if_aborted();
    }
    std::vector<int> missing;
    for (int r = 0; r < size_; ++r) {
      if (arrived_generation_[r] != generation + 1) missing.push_back(r);
    }
    lock.unlock();
    const std::string reason =
        fmt::format("rank {} of a {}-rank group timed out in {} waiting for ranks {}", rank, size_,
                    op_kind_name(kind), fmt::join(missing, ", "));
    world_->abort(reason);
    lock.lock();
    wait_for_phases_locked(lock);
    TS_THROW(CommError, "thread comm: {}", reason);
  }

  // For an op that fails inside a data phase (e.g. the ranks disagree on the op).
  void leave_phase(int rank) {
    std::lock_guard lock(mutex_);
    leave_phase_locked(rank);
  }

  void abort(const std::string& reason) {
    {
      std::lock_guard lock(mutex_);
      if (aborted_) return;
      aborted_ = true;
      abort_reason_ = reason;
    }
    cv_.notify_all();
    std::vector<std::shared_ptr<CompletionWork>> pending;
    {
      std::lock_guard lock(p2p_mutex_);
      p2p_aborted_ = true;
      for (auto& [key, queue] : p2p_pending_) {
        for (auto& request : queue) pending.push_back(request.work);
      }
      p2p_pending_.clear();
    }
    for (auto& work : pending) {
      work->mark_failed(fmt::format("{}: thread comm aborted: {}", work->what(), reason));
    }
  }

  // Point-to-point: whichever side is posted second does the copy and completes both Works.
  // Requests for one (src, dst, tag) match in posting order.
  void post_p2p(int src, int dst, int tag, bool is_send, P2PRequest request) {
    P2PRequest other;
    {
      std::lock_guard lock(p2p_mutex_);
      if (p2p_aborted_) {
        request.work->mark_failed(
            fmt::format("{}: thread comm aborted: {}", request.work->what(), abort_reason()));
        return;
      }
      auto& mine = p2p_pending_[{src, dst, tag, is_send}];
      auto& theirs = p2p_pending_[{src, dst, tag, !is_send}];
      if (theirs.empty()) {
        mine.push_back(std::move(request));
        return;
      }
      other = std::move(theirs.front());
      theirs.pop_front();
    }
    P2PRequest& send = is_send ? request : other;
    P2PRequest& recv = is_send ? other : request;
    if (send.bytes != recv.bytes) {
      const std::string reason =
          fmt::format("send from rank {} to rank {} (tag {}) has {} bytes but the recv expects {}",
                      src, dst, tag, send.bytes, recv.bytes);
      world_->abort(reason);
      send.work->mark_failed(fmt::format("{}: {}", send.work->what(), reason));
      recv.work->mark_failed(fmt::format("{}: {}", recv.work->what(), reason));
      return;
    }
    if (send.bytes > 0) std::memcpy(recv.recv, send.send, send.bytes);
    send.work->mark_done();
    recv.work->mark_done();
  }

 private:
  static constexpr int kSpins = 64;

  std::string abort_reason() {
    std::lock_guard lock(mutex_);
    return abort_reason_;
  }

  void enter_phase_locked(int rank) {
    in_phase_[rank] = true;
    ++ranks_in_phase_;
  }
  void leave_phase_locked(int rank) {
    if (!in_phase_[rank]) return;
    in_phase_[rank] = false;
    if (--ranks_in_phase_ == 0) cv_.notify_all();
  }
  void wait_for_phases_locked(std::unique_lock<std::mutex>& lock) {
    cv_.wait(lock, [&] { return ranks_in_phase_ == 0; });
  }

  void throw_if_aborted() {
    if (aborted_) TS_THROW(CommError, "thread comm aborted: {}", abort_reason_);
  }

  const int size_;
  const std::shared_ptr<ThreadWorld> world_;
  std::vector<Slot> slots_;

  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::vector<uint64_t> arrived_generation_;  // for naming the ranks that never arrived
  std::vector<bool> in_phase_;
  int ranks_in_phase_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;

  std::mutex p2p_mutex_;
  bool p2p_aborted_ = false;
  std::map<std::tuple<int, int, int, bool>, std::deque<P2PRequest>> p2p_pending_;
};

void ThreadWorld::add(const std::shared_ptr<GroupContext>& context) {
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    contexts_.push_back(context);
    if (!aborted_) return;
    reason = reason_;
  }
  context->abort(reason);
}

void ThreadWorld::abort(const std::string& reason) {
  std::vector<std::weak_ptr<GroupContext>> contexts;
  {
    std::lock_guard lock(mutex_);
    if (aborted_) return;
    reason_ = reason;
    aborted_.store(true, std::memory_order_release);
    contexts = contexts_;
  }
  for (auto& weak : contexts) {
    if (auto context = weak.lock()) context->abort(reason);
  }
}

// Splits [0, count) into `parts` slices whose boundaries fall on 64-byte lines, so ranks
// writing neighbouring slices never share a cache line.
std::pair<size_t, size_t> slice_of(size_t count, size_t elem_size, int part, int parts) {
  const size_t align = std::max<size_t>(1, 64 / elem_size);
  auto boundary = [&](int p) {
    const size_t raw = count / parts * p + count % parts * p / parts;
    return std::min(count, (raw + align - 1) / align * align);
  };
  return {boundary(part), part + 1 == parts ? count : boundary(part + 1)};
}

const char* byte_ptr(const void* p, size_t elements, DType dtype) {
  return static_cast<const char*>(p) + elements * dtype_size(dtype);
}
char* byte_ptr(void* p, size_t elements, DType dtype) {
  return static_cast<char*>(p) + elements * dtype_size(dtype);
}

class ThreadProcessGroup final : public ProcessGroup {
 public:
  ThreadProcessGroup(std::shared_ptr<GroupContext> context, int rank)
      : context_(std::move(context)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return context_->size(); }
  std::string_view backend_name() const override { return "thread"; }

  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    auto result = std::make_shared<std::pair<std::shared_ptr<GroupContext>, int>>();
    auto work = submit("split", default_comm_timeout(), 0,
                       [this, color, key, result](Clock::time_point deadline) {
                         *result = run_split(color, key, deadline);
                       });
    work->wait();
    if (!result->first) return nullptr;
    return std::make_shared<ThreadProcessGroup>(result->first, result->second);
  }

  WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                     const AllreduceOptions& opts) override {
    detail::check_reducible("all_reduce", dtype);
    return submit("all_reduce", opts.timeout, count * dtype_size(dtype),
                  [=, this](Clock::time_point deadline) {
                    const int n = size();
                    OpDesc desc{OpKind::AllReduce, count, dtype, opts.op, 0, {}};
                    publish(send, recv, desc);
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
                    check_agreement(desc);
                    // One pass: this rank reduces its slice of every peer's input and writes the
                    // result into every peer's output. Only this rank touches that slice of any
                    // buffer, so no one else reads what it overwrites, even in place.
                    const auto [begin, end] = slice_of(count, dtype_size(dtype), rank_, n);
                    std::vector<const void*> sources(n);
                    std::vector<void*> destinations(n);
                    for (int j = 0; j < n; ++j) {
                      const int peer =
                          (rank_ + j) % n;  // start with our own copy: it is the one read next
                      sources[j] = byte_ptr(context_->slot(j).send, begin, dtype);
                      destinations[j] = byte_ptr(context_->slot(peer).recv, begin, dtype);
                    }
                    reduce_into_each(destinations, sources, end - begin, dtype, opts.op, n);
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
                  });
  }

  WorkPtr reduce_scatter_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                           DType dtype, const ReduceScatterOptions& opts) override {
    detail::check_reducible("reduce_scatter", dtype);
    detail::check_counts("reduce_scatter", recv_counts, size());
    std::vector<size_t> counts(recv_counts.begin(), recv_counts.end());
    const size_t bytes = detail::total_count(counts) * dtype_size(dtype);
    return submit("reduce_scatter", opts.timeout, bytes, [=, this](Clock::time_point deadline) {
      const int n = size();
      OpDesc desc{OpKind::ReduceScatter, detail::total_count(counts), dtype, opts.op, 0, counts};
      publish(send, recv, desc);
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
      check_agreement(desc);
      size_t offset = 0;
      for (int j = 0; j < rank_; ++j) offset += counts[j];
      std::vector<const void*> sources(n);
      for (int j = 0; j < n; ++j) sources[j] = byte_ptr(context_->slot(j).send, offset, dtype);
      reduce_into(recv, sources, counts[rank_], dtype, opts.op, n);
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
    });
  }

  WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                       DType dtype, const AllgatherOptions& opts) override {
    detail::check_counts("all_gather", recv_counts, size());
    std::vector<size_t> counts(recv_counts.begin(), recv_counts.end());
    const size_t bytes = detail::total_count(counts) * dtype_size(dtype);
    return submit("all_gather", opts.timeout, bytes, [=, this](Clock::time_point deadline) {
      const int n = size();
      OpDesc desc{OpKind::AllGather, detail::total_count(counts), dtype, ReduceOp::Sum, 0, counts};
      publish(send, recv, desc);
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
      check_agreement(desc);
      std::vector<size_t> offsets(n, 0);
      for (int j = 1; j < n; ++j) offsets[j] = offsets[j - 1] + counts[j - 1];
      for (int step = 0; step < n; ++step) {
        const int owner = (rank_ + step) % n;
        char* dst = byte_ptr(recv, offsets[owner], dtype);
        const void* src = context_->slot(owner).send;
        if (counts[owner] > 0 && src != dst)
          std::memcpy(dst, src, counts[owner] * dtype_size(dtype));
      }
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
    });
  }

  WorkPtr broadcast(void* buf, size_t count, DType dtype, const BroadcastOptions& opts) override {
    detail::check_rank("broadcast", "root", opts.root, size());
    return submit("broadcast", opts.timeout, count * dtype_size(dtype),
                  [=, this](Clock::time_point deadline) {
                    OpDesc desc{OpKind::Broadcast, count, dtype, ReduceOp::Sum, opts.root, {}};
                    publish(buf, buf, desc);
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
                    check_agreement(desc);
                    if (rank_ != opts.root && count > 0)
                      std::memcpy(buf, context_->slot(opts.root).send, count * dtype_size(dtype));
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
                  });
  }

  WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                 const ReduceOptions& opts) override {
    detail::check_reducible("reduce", dtype);
    detail::check_rank("reduce", "root", opts.root, size());
    return submit("reduce", opts.timeout, count * dtype_size(dtype),
                  [=, this](Clock::time_point deadline) {
                    const int n = size();
                    OpDesc desc{OpKind::Reduce, count, dtype, opts.op, opts.root, {}};
                    publish(send, recv, desc);
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
                    check_agreement(desc);
                    // Every rank reduces its slice straight into the root's buffer.
                    const auto [begin, end] = slice_of(count, dtype_size(dtype), rank_, n);
                    std::vector<const void*> sources(n);
                    for (int j = 0; j < n; ++j)
                      sources[j] = byte_ptr(context_->slot(j).send, begin, dtype);
                    reduce_into(byte_ptr(context_->slot(opts.root).recv, begin, dtype), sources,
                                end - begin, dtype, opts.op, n);
                    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
                  });
  }

  WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
               const SendRecvOptions& opts) override {
    detail::check_rank("send", "destination", dst, size());
    const auto what = detail::p2p_description(P2POp::Kind::Send, dst, opts.what, opts.tag);
    return submit_p2p(what, opts, [=, this](std::shared_ptr<CompletionWork> work) {
      context_->post_p2p(rank_, dst, opts.tag, true,
                         P2PRequest{buf, nullptr, count * dtype_size(dtype), work});
    });
  }

  WorkPtr recv(void* buf, size_t count, DType dtype, int src,
               const SendRecvOptions& opts) override {
    detail::check_rank("recv", "source", src, size());
    const auto what = detail::p2p_description(P2POp::Kind::Recv, src, opts.what, opts.tag);
    return submit_p2p(what, opts, [=, this](std::shared_ptr<CompletionWork> work) {
      context_->post_p2p(src, rank_, opts.tag, false,
                         P2PRequest{nullptr, buf, count * dtype_size(dtype), work});
    });
  }

  WorkPtr barrier(const BarrierOptions& opts) override {
    return submit("barrier", opts.timeout, 0, [=, this](Clock::time_point deadline) {
      OpDesc desc{OpKind::Barrier, 0, DType::F32, ReduceOp::Sum, 0, {}};
      publish(nullptr, nullptr, desc);
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
      check_agreement(desc);
      // Rank 0's slot must stay unchanged until every rank has compared against it.
      context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
    });
  }

  void abort(std::string_view reason) override {
    context_->world().abort(fmt::format("rank {} failed: {}", rank_, reason));
  }

 private:
  void publish(const void* send, void* recv, const OpDesc& desc) {
    auto& slot = context_->slot(rank_);
    slot.send = send;
    slot.recv = recv;
    slot.desc = desc;
  }

  // Every rank compares every slot, so all of them see a disagreement before any touches data.
  void check_agreement(const OpDesc& mine) {
    for (int r = 0; r < size(); ++r) {
      const OpDesc& other = context_->slot(r).desc;
      const bool same = other.kind == mine.kind && other.count == mine.count &&
                        other.dtype == mine.dtype && other.op == mine.op &&
                        other.root == mine.root &&
                        std::equal(other.counts.begin(), other.counts.end(), mine.counts.begin(),
                                   mine.counts.end());
      if (!same) {
        TS_THROW(CommError,
                 "thread comm: ranks disagree on a collective: rank {} called {}(count={}, "
                 "dtype={}, op={}, root={}) "
                 "but rank {} called {}(count={}, dtype={}, op={}, root={}); every rank must issue "
                 "the same "
                 "collectives in the same order",
                 r, op_kind_name(other.kind), other.count, dtype_name(other.dtype),
                 reduce_op_name(other.op), other.root, rank_, op_kind_name(mine.kind), mine.count,
                 dtype_name(mine.dtype), reduce_op_name(mine.op), mine.root);
      }
    }
  }

  // Returns this rank's new (context, rank), or a null context for a negative color.
  std::pair<std::shared_ptr<GroupContext>, int> run_split(int color, int key,
                                                          Clock::time_point deadline) {
    OpDesc desc{OpKind::Split, 0, DType::F32, ReduceOp::Sum, 0, {}};
    publish(nullptr, nullptr, desc);
    auto& mine = context_->slot(rank_);
    mine.color = color;
    mine.key = key;
    mine.new_context.reset();
    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
    check_agreement(desc);
    std::vector<std::pair<int, int>> members;  // (key, old rank), sorted = new rank order
    if (color >= 0) {
      for (int r = 0; r < size(); ++r) {
        if (context_->slot(r).color == color) members.emplace_back(context_->slot(r).key, r);
      }
      std::sort(members.begin(), members.end());
      if (members.front().second == rank_) {
        mine.new_context =
            std::make_shared<GroupContext>(static_cast<int>(members.size()), context_->world_ptr());
        context_->world().add(mine.new_context);
      }
    }
    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/false);
    std::pair<std::shared_ptr<GroupContext>, int> result{nullptr, -1};
    if (color >= 0) {
      const auto it =
          std::find_if(members.begin(), members.end(), [&](auto& m) { return m.second == rank_; });
      result = {context_->slot(members.front().second).new_context,
                static_cast<int>(it - members.begin())};
    }
    // The leader keeps its slot's reference until everyone has copied it.
    context_->arrive_and_wait(rank_, deadline, desc.kind, /*last=*/true);
    mine.new_context.reset();
    return result;
  }

  template <typename Body>
  WorkPtr submit(std::string_view what, Timeout timeout, size_t bytes, Body body) {
    const Timeout limit = resolve_timeout(timeout);
    const auto deadline = Clock::now() + limit;
    auto work =
        std::make_shared<CompletionWork>(fmt::format("thread comm rank {}: {}", rank_, what),
                                         std::chrono::duration_cast<Timeout>(limit + kWaitGrace));
    auto run = [this, work, deadline, body = std::move(body)]() mutable {
      try {
        body(deadline);
        work->mark_done();
      } catch (const std::exception& e) {
        context_->leave_phase(rank_);
        context_->world().abort(fmt::format("rank {}: {}", rank_, e.what()));
        work->mark_failed(e.what());
      }
    };
    if (bytes <= kInlineBytes && progress_.idle()) {
      run();
    } else {
      progress_.post(std::move(run));
    }
    return work;
  }

  template <typename Post>
  WorkPtr submit_p2p(std::string_view what, const SendRecvOptions& opts, Post post) {
    auto work = std::make_shared<CompletionWork>(
        fmt::format("thread comm rank {}: {}", rank_, what), resolve_timeout(opts.timeout));
    // A send or recv that never finds its partner has no progress-thread deadline, so the
    // waiter's timeout is what aborts the world.
    std::weak_ptr<ThreadWorld> world = context_->world_ptr();
    work->on_wait_timeout([world](const std::string& message) {
      if (auto w = world.lock()) w->abort(message);
    });
    progress_.post([post = std::move(post), work]() mutable { post(work); });
    return work;
  }

  std::shared_ptr<GroupContext> context_;
  const int rank_;
  // Declared last: destroyed first, so queued tasks finish while the members they use live.
  ProgressThread progress_;
};

}  // namespace

std::vector<ProcessGroupPtr> make_thread_world(int world_size) {
  TS_CHECK(world_size >= 1, "make_thread_world: world size must be at least 1, got {}", world_size);
  auto world = std::make_shared<ThreadWorld>();
  auto context = std::make_shared<GroupContext>(world_size, world);
  world->add(context);
  std::vector<ProcessGroupPtr> groups;
  groups.reserve(world_size);
  for (int r = 0; r < world_size; ++r)
    groups.push_back(std::make_shared<ThreadProcessGroup>(context, r));
  return groups;
}

void spawn_ranks(int world_size, const std::function<void(ProcessGroup&)>& fn) {
  auto groups = make_thread_world(world_size);
  std::mutex mutex;
  std::exception_ptr first_failure;
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*groups[r]);
      } catch (...) {
        std::string message = "unknown exception";
        try {
          throw;
        } catch (const std::exception& e) {
          message = e.what();
        } catch (...) {
        }
        {
          std::lock_guard lock(mutex);
          if (!first_failure) first_failure = std::current_exception();
        }
        groups[r]->abort(message);
      }
    });
  }
  for (auto& t : threads) t.join();
  groups.clear();
  if (first_failure) std::rethrow_exception(first_failure);
}

}  // namespace tessera::parallel
