// Failure behaviour of the thread backend: a rank that throws, never arrives, or disagrees
// makes every peer fail with CommError within a bounded time instead of hanging.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

TEST(ThreadFailure, ThrowingRankFailsPeersPromptly) {
  constexpr int kWorld = 4;
  std::array<std::string, kWorld> peer_errors;
  const auto start = Clock::now();
  try {
    spawn_ranks(kWorld, [&](ProcessGroup& pg) {
      if (pg.rank() == 2) throw std::runtime_error("boom from rank 2");
      std::vector<float> buf(1000, 1.0f);
      try {
        // The default 300 s timeout must not matter: the abort wakes everyone.
        for (;;) pg.all_reduce(buf.data(), buf.size(), DType::F32)->wait();
      } catch (const CommError& e) {
        peer_errors[pg.rank()] = e.what();
        throw;
      }
    });
    FAIL() << "spawn_ranks should rethrow";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom from rank 2") << "the first failure is rethrown, not a peer's";
  }
  EXPECT_LT(seconds_since(start), 5.0);
  for (int r : {0, 1, 3})
    EXPECT_NE(peer_errors[r].find("boom from rank 2"), std::string::npos) << peer_errors[r];
}

TEST(ThreadFailure, MissingRankTimesOut) {
  std::atomic<bool> timed_out{false};
  const auto start = Clock::now();
  EXPECT_THROW(spawn_ranks(3,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 1) return;  // never arrives
                             float x = 1;
                             try {
                               pg.all_reduce(&x, 1, DType::F32, {.timeout = 300ms})->wait();
                             } catch (const CommError& e) {
                               const std::string what = e.what();
                               if (what.find("timed out") != std::string::npos &&
                                   what.find("ranks 1") != std::string::npos) {
                                 timed_out = true;
                               }
                               throw;
                             }
                           }),
               CommError);
  EXPECT_TRUE(timed_out);
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(ThreadFailure, TimeoutSettingIsTheDefault) {
  setenv("TESSERA_COMM_TIMEOUT_S", "1", 1);
  EXPECT_EQ(default_comm_timeout(), std::chrono::seconds(1));
  const auto start = Clock::now();
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 0) pg.barrier()->wait();
                           }),
               CommError);
  unsetenv("TESSERA_COMM_TIMEOUT_S");
  EXPECT_GE(seconds_since(start), 0.9);
  EXPECT_LT(seconds_since(start), 4.0);
}

TEST(ThreadFailure, MismatchedCollectivesFailLoudly) {
  try {
    spawn_ranks(2, [&](ProcessGroup& pg) {
      std::vector<float> buf(16);
      pg.all_reduce(buf.data(), pg.rank() == 0 ? 10 : 11, DType::F32)->wait();
    });
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("disagree"), std::string::npos) << e.what();
  }
}

TEST(ThreadFailure, UnmatchedRecvTimesOut) {
  const auto start = Clock::now();
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 0) {
                               float x;
                               pg.recv(&x, 1, DType::F32, 1, {.timeout = 200ms})->wait();
                             }
                           }),
               CommError);
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(ThreadFailure, SendRecvSizeMismatchFails) {
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             std::vector<float> buf(8);
                             if (pg.rank() == 0) pg.send(buf.data(), 8, DType::F32, 1)->wait();
                             if (pg.rank() == 1) pg.recv(buf.data(), 4, DType::F32, 0)->wait();
                           }),
               CommError);
}

TEST(ThreadFailure, AbortFailsSubgroupsToo) {
  std::atomic<int> comm_errors{0};
  EXPECT_THROW(spawn_ranks(4,
                           [&](ProcessGroup& pg) {
                             auto sub = pg.split(pg.rank() % 2, 0);
                             if (pg.rank() == 0) throw InvalidArgument("bad config on rank 0");
                             try {
                               for (;;) sub->barrier()->wait();
                             } catch (const CommError&) {
                               ++comm_errors;
                               throw;
                             }
                           }),
               InvalidArgument);
  EXPECT_EQ(comm_errors, 3);
}

TEST(ThreadFailure, WaitRethrowsEveryTime) {
  spawn_ranks(1, [](ProcessGroup& pg) {
    pg.abort("test abort");
    auto work = pg.barrier();
    EXPECT_THROW(work->wait(), CommError);
    EXPECT_TRUE(work->is_completed());
    EXPECT_THROW(work->wait(), CommError);
  });
}

}  // namespace
}  // namespace tessera::parallel
