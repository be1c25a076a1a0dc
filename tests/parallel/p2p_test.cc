// batch_send_recv on thread ranks: ring exchanges over world sizes, counts and dtypes, both
// neighbours sending first, message order across batches, sends to self, argument checks
// (tests/parallel/mpi/p2p_checks.h, shared with the MPI tests), and failures: a peer that
// never posts fails the waiting rank with a message naming the op, and fails its peers too.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <tuple>

#include "parallel/comm/counting_group.h"
#include "parallel/comm/nccl_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "tessera/config.h"
#include "tests/parallel/mpi/p2p_checks.h"

#if TESSERA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace tessera::parallel {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::Bytes;
using testing::make_input;
using testing::recv_op;
using testing::send_op;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool contains(const std::string& text, std::string_view word) {
  return text.find(word) != std::string::npos;
}

using RingParam = std::tuple<int, size_t, DType>;
class P2PRing : public ::testing::TestWithParam<RingParam> {};

TEST_P(P2PRing, OneBatchPerRank) {
  const auto [world, count, dtype] = GetParam();
  spawn_ranks(world, [&](ProcessGroup& pg) { testing::check_batch_ring(pg, count, dtype); });
}

TEST_P(P2PRing, BothDirectionsInOneBatch) {
  const auto [world, count, dtype] = GetParam();
  spawn_ranks(world,
              [&](ProcessGroup& pg) { testing::check_batch_bidirectional(pg, count, dtype); });
}

// World 1 is the ring to oneself: the send-to-self path.
INSTANTIATE_TEST_SUITE_P(All, P2PRing,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values<size_t>(0, 1, 1001, 1 << 20),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const ::testing::TestParamInfo<RingParam>& info) {
                           return fmt::format("w{}_n{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param),
                                              dtype_name(std::get<2>(info.param)));
                         });

TEST(P2PBatch, BothNeighboursSendThenReceive4MiB) {
  for (int world : {2, 3, 4}) spawn_ranks(world, testing::check_batch_big_exchange);
}

TEST(P2PBatch, BatchesInARowKeepMessageOrder) {
  for (int world : {2, 3}) {
    spawn_ranks(world, [](ProcessGroup& pg) {
      testing::check_batch_order(pg, 8, 1001);
      testing::check_batch_order(pg, 4, 1 << 18);
    });
  }
}

TEST(P2PBatch, SendToSelfIsACopy) {
  for (int world : {1, 2, 3}) spawn_ranks(world, testing::check_batch_self);
}

TEST(P2PBatch, RejectsBadBatchesBeforePostingAnything) {
  for (int world : {1, 2, 3}) spawn_ranks(world, testing::check_batch_rejects);
}

TEST(P2PBatch, EmptyBatchIsComplete) { spawn_ranks(2, testing::check_empty_batch); }

TEST(P2PBatch, CountingGroupForwardsTheBatch) {
  spawn_ranks(2, [](ProcessGroup& world) {
    CountingGroup counted(world);
    const int peer = 1 - world.rank();
    Bytes out = make_input(world.rank(), 10, DType::F32);
    Bytes in(40);
    const std::vector<P2POp> ops{send_op(out, 10, DType::F32, peer),
                                 recv_op(in, 10, DType::F32, peer)};
    ProcessGroup& group = counted;  // the interface's default options
    group.batch_send_recv(ops)->wait();
    EXPECT_EQ(counted.volume_bytes(), 40) << "a message counts once, on the sending rank";
    EXPECT_TRUE(testing::same_elements(in, make_input(peer, 10, DType::F32), DType::F32));
  });
}

// Rank 1 never posts. Rank 0's batch waits on a receive from it and times out naming that
// receive; rank 2, waiting with the default (300 s) timeout, fails as soon as rank 0's timeout
// aborts the world.
TEST(P2PFailure, AbsentPeerFailsTheBatchAndItsPeers) {
  constexpr std::string_view kActivation = "activation of micro-batch 3 from pipeline stage 0";
  constexpr std::string_view kGradient = "gradient of micro-batch 3 from pipeline stage 1";
  std::array<std::string, 3> errors;
  const auto start = Clock::now();
  EXPECT_THROW(spawn_ranks(3,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 1) return;
                             Bytes act(64), grad(64);
                             std::vector<P2POp> ops;
                             SendRecvOptions opts;
                             if (pg.rank() == 0) {
                               ops = {send_op(act, 16, DType::F32, 2, std::string(kActivation)),
                                      recv_op(grad, 16, DType::F32, 1, std::string(kGradient))};
                               opts.timeout = 200ms;
                             } else {
                               ops = {recv_op(act, 16, DType::F32, 0, std::string(kActivation)),
                                      recv_op(grad, 16, DType::F32, 1, std::string(kGradient))};
                             }
                             try {
                               pg.batch_send_recv(ops, opts)->wait();
                             } catch (const CommError& e) {
                               errors[pg.rank()] = e.what();
                               throw;
                             }
                           }),
               CommError);
  EXPECT_LT(seconds_since(start), 3.0);
  for (int r : {0, 2}) {
    EXPECT_TRUE(contains(errors[r], fmt::format("recv of {} (from rank 1)", kGradient)))
        << errors[r];
    EXPECT_FALSE(contains(errors[r], "\n")) << errors[r];
  }
  EXPECT_TRUE(contains(errors[0], "thread comm rank 0: recv of")) << errors[0];
  EXPECT_TRUE(contains(errors[0], "did not complete within 0.2 s")) << errors[0];
  EXPECT_TRUE(contains(errors[2], "aborted")) << errors[2];
}

TEST(P2PFailure, ExplicitWaitTimeoutBoundsTheWholeBatch) {
  const auto start = Clock::now();
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 1) return;
                             Bytes a(16), b(16);
                             const std::vector<P2POp> ops{recv_op(a, 4, DType::F32, 1),
                                                          recv_op(b, 4, DType::F32, 1)};
                             // Each op's own timeout is 300 s; the wait's 200 ms covers both.
                             pg.batch_send_recv(ops)->wait(200ms);
                           }),
               CommError);
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(P2PFailure, SingleRecvNamesItsWhat) {
  std::string error;
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             if (pg.rank() == 1) return;
                             float x;
                             try {
                               pg.recv(&x, 1, DType::F32, 1,
                                       {.tag = 7, .timeout = 200ms, .what = "loss scale"})
                                   ->wait();
                             } catch (const CommError& e) {
                               error = e.what();
                               throw;
                             }
                           }),
               CommError);
  EXPECT_TRUE(contains(error, "recv of loss scale (from rank 1, tag 7)")) << error;
}

TEST(P2PFailure, SizeMismatchNamesBothSides) {
  std::array<std::string, 2> errors;
  EXPECT_THROW(spawn_ranks(2,
                           [&](ProcessGroup& pg) {
                             Bytes buf(32);
                             const int peer = 1 - pg.rank();
                             std::vector<P2POp> ops;
                             if (pg.rank() == 0)
                               ops = {send_op(buf, 8, DType::F32, peer, "logits")};
                             if (pg.rank() == 1)
                               ops = {recv_op(buf, 4, DType::F32, peer, "logits")};
                             try {
                               pg.batch_send_recv(ops)->wait();
                             } catch (const CommError& e) {
                               errors[pg.rank()] = e.what();
                               throw;
                             }
                           }),
               CommError);
  EXPECT_TRUE(contains(errors[0], "send of logits (to rank 1)")) << errors[0];
  EXPECT_TRUE(contains(errors[1], "recv of logits (from rank 0)")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "32 bytes but the recv expects 16")) << errors[1];
}

#if TESSERA_WITH_CUDA
// The nccl backend's grouped launch, one rank per visible GPU (up to 4): a 4 MiB ring with
// every rank sending first, and a bf16 send to self, in one batch. Skips without a device.
TEST(P2PNccl, RingAndSendToSelfInOneLaunch) {
  const int devices = cuda_device_count();
  if (devices == 0) GTEST_SKIP() << "no CUDA device";
  spawn_ranks(std::min(devices, 4), [](ProcessGroup& bootstrap) {
    auto pg = make_nccl_group(bootstrap, bootstrap.rank());
    const int n = pg->size();
    const int r = pg->rank();
    const int next = (r + 1) % n;
    const int prev = (r + n - 1) % n;
    constexpr size_t kRing = size_t{1} << 20;
    constexpr size_t kSelf = 1001;
    const Bytes ring = make_input(r, kRing, DType::F32, 51);
    const Bytes self = make_input(r, kSelf, DType::BF16, 52);
    std::array<void*, 4> dev{};  // ring out, ring in, self out, self in
    const std::array<size_t, 4> bytes{ring.size(), ring.size(), self.size(), self.size()};
    for (size_t i = 0; i < dev.size(); ++i) ASSERT_EQ(cudaMalloc(&dev[i], bytes[i]), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dev[0], ring.data(), ring.size(), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dev[2], self.data(), self.size(), cudaMemcpyHostToDevice), cudaSuccess);
    // In a world of one the ring is a send to self too; the order still pairs each send with
    // the receive of its size.
    const std::vector<P2POp> ops{{P2POp::Kind::Send, dev[0], kRing, DType::F32, next, "ring block"},
                                 {P2POp::Kind::Send, dev[2], kSelf, DType::BF16, r, "self block"},
                                 {P2POp::Kind::Recv, dev[1], kRing, DType::F32, prev, "ring block"},
                                 {P2POp::Kind::Recv, dev[3], kSelf, DType::BF16, r, "self block"}};
    pg->batch_send_recv(ops, {.timeout = std::chrono::seconds(60)})->wait();
    Bytes got_ring(ring.size()), got_self(self.size());
    ASSERT_EQ(cudaMemcpy(got_ring.data(), dev[1], ring.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got_self.data(), dev[3], self.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_TRUE(
        testing::same_elements(got_ring, make_input(prev, kRing, DType::F32, 51), DType::F32))
        << "rank " << r;
    EXPECT_TRUE(testing::same_elements(got_self, self, DType::BF16)) << "rank " << r;
    EXPECT_TRUE(pg->batch_send_recv({})->is_completed());
    for (void* p : dev) cudaFree(p);
  });
}
#endif

}  // namespace
}  // namespace tessera::parallel
