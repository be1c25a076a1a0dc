// Pipeline-parallel faults on thread ranks:
// - a stage that throws in the middle of a step (at one of its activation or gradient
//   transfers, p = 2 and 4, also with 2 data-parallel pipelines; or in the optimizer's
//   collectives) ends every rank at once: the peers' waits fail through the abort, not by
//   timing out, and spawn_ranks rethrows the stage's own error;
// - a stage that stalls before a send (1F1B at p = 2 and 4, interleaved at p = 2 x 2 chunks),
//   or never runs its step, makes the neighbour waiting for it fail within
//   TESSERA_COMM_TIMEOUT_S with a CommError naming the transfer: activation or gradient, the
//   micro-batch, the virtual stages and the peer rank.
// The faults are injected by a ProcessGroup wrapper that runs a hook before every point-to-
// point op a rank posts (the trainer's transfers name themselves in SendRecvOptions::what), so
// the trainer runs unmodified.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "pipeline_parallel_checks.h"
#include "runtime/core/error.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

using Clock = std::chrono::steady_clock;
using parallel::P2POp;
using test_util::Contains;
using test_util::pp_config;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Runs before each send or receive a rank posts, with the op's kind and its `what` ("gradient
// of micro-batch 2 from virtual stage 1 to 0"): it may throw (the stage fails there) or block
// (the stage stalls).
using TransferHook = std::function<void(P2POp::Kind kind, const std::string& what)>;

// Forwards everything to `inner`; split() wraps the subgroups too, so the pipeline group the
// trainer splits off runs the hook. `p2p_timeout` (when set) replaces the default timeout of
// this rank's point-to-point ops: the ranks that are not under test wait longer than the one
// whose timeout the test checks, so the first timeout is always that rank's.
class HookedGroup final : public parallel::ProcessGroup {
 public:
  HookedGroup(parallel::ProcessGroup& inner, std::shared_ptr<TransferHook> hook,
              std::optional<parallel::Timeout> p2p_timeout)
      : inner_(inner), hook_(std::move(hook)), p2p_timeout_(p2p_timeout) {}
  HookedGroup(parallel::ProcessGroupPtr owned, std::shared_ptr<TransferHook> hook,
              std::optional<parallel::Timeout> p2p_timeout)
      : owned_(std::move(owned)),
        inner_(*owned_),
        hook_(std::move(hook)),
        p2p_timeout_(p2p_timeout) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend_name() const override { return inner_.backend_name(); }
  parallel::ProcessGroupPtr split(int color, int key) override {
    parallel::ProcessGroupPtr sub = inner_.split(color, key);
    if (sub == nullptr) return nullptr;
    return std::make_shared<HookedGroup>(std::move(sub), hook_, p2p_timeout_);
  }
  parallel::WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                               const parallel::AllreduceOptions& opts) override {
    return inner_.all_reduce(send, recv, count, dtype, opts);
  }
  parallel::WorkPtr reduce_scatter_v(const void* send, void* recv,
                                     std::span<const size_t> recv_counts, DType dtype,
                                     const parallel::ReduceScatterOptions& opts) override {
    return inner_.reduce_scatter_v(send, recv, recv_counts, dtype, opts);
  }
  parallel::WorkPtr reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                                   const parallel::ReduceScatterOptions& opts) override {
    return inner_.reduce_scatter(send, recv, recv_count, dtype, opts);
  }
  parallel::WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                                 DType dtype, const parallel::AllgatherOptions& opts) override {
    return inner_.all_gather_v(send, recv, recv_counts, dtype, opts);
  }
  parallel::WorkPtr all_gather(const void* send, void* recv, size_t send_count, DType dtype,
                               const parallel::AllgatherOptions& opts) override {
    return inner_.all_gather(send, recv, send_count, dtype, opts);
  }
  parallel::WorkPtr broadcast(void* buf, size_t count, DType dtype,
                              const parallel::BroadcastOptions& opts) override {
    return inner_.broadcast(buf, count, dtype, opts);
  }
  parallel::WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                           const parallel::ReduceOptions& opts) override {
    return inner_.reduce(send, recv, count, dtype, opts);
  }
  parallel::WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
                         const parallel::SendRecvOptions& opts) override {
    (*hook_)(P2POp::Kind::Send, opts.what);
    return inner_.send(buf, count, dtype, dst, patient(opts));
  }
  parallel::WorkPtr recv(void* buf, size_t count, DType dtype, int src,
                         const parallel::SendRecvOptions& opts) override {
    (*hook_)(P2POp::Kind::Recv, opts.what);
    return inner_.recv(buf, count, dtype, src, patient(opts));
  }
  parallel::WorkPtr batch_send_recv(std::span<const P2POp> ops,
                                    const parallel::SendRecvOptions& opts) override {
    for (const P2POp& op : ops) (*hook_)(op.kind, op.what.empty() ? opts.what : op.what);
    return inner_.batch_send_recv(ops, patient(opts));
  }
  parallel::WorkPtr barrier(const parallel::BarrierOptions& opts) override {
    return inner_.barrier(opts);
  }
  void abort(std::string_view reason) override { inner_.abort(reason); }

 private:
  parallel::SendRecvOptions patient(parallel::SendRecvOptions opts) const {
    if (p2p_timeout_ && opts.timeout == parallel::kDefaultTimeout) opts.timeout = *p2p_timeout_;
    return opts;
  }

  parallel::ProcessGroupPtr owned_;
  parallel::ProcessGroup& inner_;
  std::shared_ptr<TransferHook> hook_;
  std::optional<parallel::Timeout> p2p_timeout_;
};

// TESSERA_COMM_TIMEOUT_S for one test (read when each op is posted), restored after it.
class ScopedCommTimeout {
 public:
  explicit ScopedCommTimeout(int seconds) {
    if (const char* v = std::getenv(kVar)) previous_ = v;
    setenv(kVar, std::to_string(seconds).c_str(), 1);
  }
  ~ScopedCommTimeout() {
    if (previous_) {
      setenv(kVar, previous_->c_str(), 1);
    } else {
      unsetenv(kVar);
    }
  }
  ScopedCommTimeout(const ScopedCommTimeout&) = delete;
  ScopedCommTimeout& operator=(const ScopedCommTimeout&) = delete;

 private:
  static constexpr const char* kVar = "TESSERA_COMM_TIMEOUT_S";
  std::optional<std::string> previous_;
};

const char* kind_name(P2POp::Kind kind) { return kind == P2POp::Kind::Send ? "send" : "recv"; }

// How each rank of a run ended.
struct Outcome {
  bool threw = false;
  bool comm_error = false;
  std::string message;
  Clock::time_point at{};
};

// Runs `body` on every thread rank, recording how each one ended (the exception is rethrown,
// so spawn_ranks still aborts the world and rethrows the first failure); returns that first
// failure's message ("" when nothing threw).
std::string run_ranks(int world, std::vector<Outcome>& outcomes,
                      const std::function<void(parallel::ProcessGroup&)>& body,
                      std::atomic<bool>* any_failed = nullptr) {
  outcomes.assign(static_cast<size_t>(world), Outcome{});
  try {
    parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
      Outcome& mine = outcomes[static_cast<size_t>(group.rank())];
      try {
        body(group);
      } catch (const std::exception& e) {
        mine.threw = true;
        mine.comm_error = dynamic_cast<const CommError*>(&e) != nullptr;
        mine.message = e.what();
        mine.at = Clock::now();
        if (any_failed != nullptr) any_failed->store(true);
        throw;
      }
    });
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// ---- a stage throwing mid-step ----

struct ThrowCase {
  std::string name;
  int p;
  int dp;
  int rank;  // world rank that throws (world rank = dp rank + dp * pipeline rank here)
  P2POp::Kind kind;
  std::string what;  // the transfer it throws at, in step 2
};

// ctest's test names carry the parameter: its name, not its bytes.
void PrintTo(const ThrowCase& tc, std::ostream* os) { *os << tc.name; }

class PipelineThrow : public testing::TestWithParam<ThrowCase> {};

TEST_P(PipelineThrow, EndsEveryRankAtOnceWithTheStagesError) {
  const ThrowCase& tc = GetParam();
  // Generous next to a step (milliseconds): the peers must fail through the abort, well
  // before any timeout.
  const ScopedCommTimeout timeout(20);
  const TrainConfig c = pp_config(tc.p, "1f1b", 4);
  const std::string injected = "pipeline stage fails at step 2 before the " +
                               std::string(kind_name(tc.kind)) + " of " + tc.what;
  std::atomic<bool> fired{false};
  std::atomic<int64_t> fired_ns{0};
  const auto start = Clock::now();
  std::vector<Outcome> outcomes;
  const std::string first = run_ranks(tc.p * tc.dp, outcomes, [&](parallel::ProcessGroup& g) {
    int step = 0;
    const int me = g.rank();
    auto hook = std::make_shared<TransferHook>([&, me](P2POp::Kind kind, const std::string& what) {
      if (me == tc.rank && step == 2 && kind == tc.kind && what == tc.what) {
        fired_ns = (Clock::now() - start).count();
        fired = true;
        throw Error(injected);
      }
    });
    HookedGroup world(g, hook, std::nullopt);
    Trainer t(c, &world);
    for (step = 1; step <= 4; ++step) t.step();
  });
  const auto end = Clock::now();
  ASSERT_TRUE(fired.load()) << "the transfer '" << tc.what << "' never ran on rank " << tc.rank;
  EXPECT_TRUE(Contains(first, injected)) << first;
  for (size_t r = 0; r < outcomes.size(); ++r) {
    EXPECT_TRUE(outcomes[r].threw) << "rank " << r << " finished its steps";
    if (static_cast<int>(r) == tc.rank) {
      EXPECT_TRUE(Contains(outcomes[r].message, injected));
    } else {
      EXPECT_TRUE(outcomes[r].comm_error) << "rank " << r << ": " << outcomes[r].message;
    }
  }
  const double after_throw = seconds_between(start + Clock::duration(fired_ns.load()), end);
  EXPECT_LT(after_throw, 5.0) << "the peers took that long to stop after the throw";
  EXPECT_LT(seconds_between(start, end), 30.0);
}

INSTANTIATE_TEST_SUITE_P(
    OneF1B, PipelineThrow,
    testing::Values(ThrowCase{"p2_last_stage_send_gradient", 2, 1, 1, P2POp::Kind::Send,
                              "gradient of micro-batch 1 from virtual stage 1 to 0"},
                    ThrowCase{"p2_first_stage_recv_gradient", 2, 1, 0, P2POp::Kind::Recv,
                              "gradient of micro-batch 0 from virtual stage 1 to 0"},
                    ThrowCase{"p4_stage1_send_activation", 4, 1, 1, P2POp::Kind::Send,
                              "activation of micro-batch 2 from virtual stage 1 to 2"},
                    ThrowCase{"p4_last_stage_recv_activation", 4, 1, 3, P2POp::Kind::Recv,
                              "activation of micro-batch 3 from virtual stage 2 to 3"},
                    ThrowCase{"p4_stage2_send_gradient", 4, 1, 2, P2POp::Kind::Send,
                              "gradient of micro-batch 1 from virtual stage 2 to 1"},
                    // 2 pipelines side by side: rank 3 is stage 1 of the second (dp rank 1).
                    ThrowCase{"dp2_p2_last_stage_send_gradient", 2, 2, 3, P2POp::Kind::Send,
                              "gradient of micro-batch 2 from virtual stage 1 to 0"}),
    [](const auto& info) { return info.param.name; });

// The failure outside the transfers: one stage throws in the optimizer step (the gradient
// hook, after the step's reduction), while the others sit in the loss broadcast or the norm's
// collective.
TEST(PipelineFaults, AStageFailingInTheOptimizerStepEndsEveryRank) {
  const ScopedCommTimeout timeout(20);
  const TrainConfig c = pp_config(4, "1f1b", 4);
  const auto start = Clock::now();
  std::vector<Outcome> outcomes;
  const std::string first = run_ranks(4, outcomes, [&](parallel::ProcessGroup& g) {
    Trainer t(c, &g);
    t.set_gradient_hook([&](int64_t step, const memory::OptimizerShard&) {
      if (step == 2 && g.rank() == 2) throw InvalidArgument("stage 2 fails at step 2");
    });
    for (int i = 0; i < 4; ++i) t.step();
  });
  EXPECT_TRUE(Contains(first, "stage 2 fails at step 2")) << first;
  for (size_t r = 0; r < outcomes.size(); ++r) {
    EXPECT_TRUE(outcomes[r].threw) << "rank " << r << " finished its steps";
    if (r != 2) {
      EXPECT_TRUE(outcomes[r].comm_error) << "rank " << r << ": " << outcomes[r].message;
    }
  }
  EXPECT_LT(seconds_between(start, Clock::now()), 15.0);
}

// ---- a stage that never sends ----

constexpr int kShortTimeoutS = 3;

struct StallCase {
  std::string name;
  int p;
  int v;
  std::string schedule;
  int stalled;       // pipeline rank that stops before its send of `what` in step 2
  std::string what;  // the transfer it never posts
  int waiting;       // the rank whose receive of it must time out
};

void PrintTo(const StallCase& sc, std::ostream* os) { *os << sc.name; }

class PipelineStall : public testing::TestWithParam<StallCase> {};

TEST_P(PipelineStall, TheWaitingNeighbourTimesOutNamingTheTransfer) {
  const StallCase& sc = GetParam();
  const ScopedCommTimeout timeout(kShortTimeoutS);
  const TrainConfig c = pp_config(sc.p, sc.schedule, 4, sc.v);
  std::atomic<bool> any_failed{false}, stalled{false};
  std::atomic<int64_t> stalled_ns{0};
  const auto start = Clock::now();
  std::vector<Outcome> outcomes;
  run_ranks(
      sc.p, outcomes,
      [&](parallel::ProcessGroup& g) {
        int step = 0;
        const int me = g.rank();
        auto hook =
            std::make_shared<TransferHook>([&, me](P2POp::Kind kind, const std::string& what) {
              if (me != sc.stalled || step != 2 || kind != P2POp::Kind::Send || what != sc.what) {
                return;
              }
              stalled_ns = (Clock::now() - start).count();
              stalled = true;
              // Stuck until a peer gives up on this stage (capped, so a broken timeout cannot
              // hang the test), then out of the step.
              const auto cap = Clock::now() + std::chrono::seconds(60);
              while (!any_failed.load() && Clock::now() < cap) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
              }
              throw Error("the stalled stage gives up");
            });
        // Only the rank under test keeps the short timeout on its transfers: in a longer
        // pipeline the ranks further away wait too (on their neighbours, themselves waiting),
        // and must not time out first.
        const std::optional<parallel::Timeout> patience =
            me == sc.waiting ? std::nullopt
                             : std::optional<parallel::Timeout>(std::chrono::seconds(60));
        HookedGroup world(g, hook, patience);
        Trainer t(c, &world);
        for (step = 1; step <= 3; ++step) t.step();
      },
      &any_failed);
  const auto end = Clock::now();
  ASSERT_TRUE(stalled.load()) << "the transfer '" << sc.what << "' never ran on rank "
                              << sc.stalled;
  const Outcome& w = outcomes[static_cast<size_t>(sc.waiting)];
  ASSERT_TRUE(w.threw) << "rank " << sc.waiting << " finished its steps";
  EXPECT_TRUE(w.comm_error) << w.message;
  EXPECT_TRUE(Contains(w.message, "recv of " + sc.what)) << w.message;
  EXPECT_TRUE(Contains(w.message, "(from rank " + std::to_string(sc.stalled) + ")")) << w.message;
  EXPECT_TRUE(Contains(w.message, "did not complete within")) << w.message;
  for (size_t r = 0; r < outcomes.size(); ++r) {
    EXPECT_TRUE(outcomes[r].threw) << "rank " << r << " finished its steps";
  }
  // The neighbour gave up one timeout after the stall (it had begun waiting at most a few
  // milliseconds before), and everyone was out right after.
  const double waited = seconds_between(start + Clock::duration(stalled_ns.load()), w.at);
  EXPECT_GT(waited, kShortTimeoutS - 1.0);
  EXPECT_LT(waited, kShortTimeoutS + 5.0);
  EXPECT_LT(seconds_between(start, end), 30.0);
}

INSTANTIATE_TEST_SUITE_P(
    Stages, PipelineStall,
    testing::Values(
        StallCase{"p2_gradient", 2, 1, "1f1b", 1,
                  "gradient of micro-batch 2 from virtual stage 1 to 0", 0},
        StallCase{"p2_activation", 2, 1, "1f1b", 0,
                  "activation of micro-batch 3 from virtual stage 0 to 1", 1},
        StallCase{"p4_activation", 4, 1, "1f1b", 2,
                  "activation of micro-batch 1 from virtual stage 2 to 3", 3},
        StallCase{"p4_gradient", 4, 1, "1f1b", 2,
                  "gradient of micro-batch 0 from virtual stage 2 to 1", 1},
        // Interleaved: rank 1's chunk 0 (virtual stage 1) feeds rank 0's chunk 1 (stage 2).
        StallCase{"p2_v2_activation", 2, 2, "interleaved", 1,
                  "activation of micro-batch 0 from virtual stage 1 to 2", 0}),
    [](const auto& info) { return info.param.name; });

// A stage that never runs its step at all (rank 1 builds its trainer, then leaves): the
// first stage's first wait on it, the gradient of micro-batch 0, times out.
TEST(PipelineFaults, AStageThatNeverStepsTimesOutItsNeighbour) {
  const ScopedCommTimeout timeout(kShortTimeoutS);
  const TrainConfig c = pp_config(2, "1f1b", 4);
  const auto start = Clock::now();
  std::vector<Outcome> outcomes;
  const std::string first = run_ranks(2, outcomes, [&](parallel::ProcessGroup& g) {
    Trainer t(c, &g);
    if (g.rank() == 1) return;
    for (int i = 0; i < 2; ++i) t.step();
  });
  const double elapsed = seconds_between(start, Clock::now());
  EXPECT_TRUE(outcomes[0].comm_error) << outcomes[0].message;
  EXPECT_TRUE(Contains(first,
                       "recv of gradient of micro-batch 0 from virtual stage 1 to 0 "
                       "(from rank 1)"))
      << first;
  EXPECT_TRUE(Contains(first, "did not complete within 3.0 s")) << first;
  EXPECT_FALSE(outcomes[1].threw) << outcomes[1].message;
  EXPECT_GT(elapsed, kShortTimeoutS - 0.5);
  EXPECT_LT(elapsed, kShortTimeoutS + 10.0);
}

}  // namespace
}  // namespace tessera::engine
