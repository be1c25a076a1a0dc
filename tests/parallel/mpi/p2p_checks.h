// Per-rank checks of ProcessGroup::batch_send_recv, shared by the thread tests
// (tests/parallel/p2p_test.cc) and the MPI tests (mpi_p2p_test.cc) so both backends are held
// to the same answers. Payloads come from collective_checks.h's make_input, so every rank
// knows what its neighbours send without communicating.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parallel/comm/process_group.h"
#include "runtime/core/error.h"
#include "tests/parallel/collective_checks.h"

namespace tessera::parallel::testing {

inline P2POp send_op(Bytes& buf, size_t count, DType dtype, int peer, std::string what = "") {
  return P2POp{P2POp::Kind::Send, buf.data(), count, dtype, peer, std::move(what)};
}
inline P2POp recv_op(Bytes& buf, size_t count, DType dtype, int peer, std::string what = "") {
  return P2POp{P2POp::Kind::Recv, buf.data(), count, dtype, peer, std::move(what)};
}

// Every rank sends to rank+1 and receives from rank-1 in one batch, with the send first and
// with the receive first.
inline void check_batch_ring(ProcessGroup& pg, size_t count, DType dt) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Bytes mine = make_input(r, count, dt, 21);
  const Bytes expected = make_input(prev, count, dt, 21);
  for (bool recv_first : {false, true}) {
    Bytes in(count * dtype_size(dt));
    std::vector<P2POp> ops{send_op(mine, count, dt, next, "ring payload"),
                           recv_op(in, count, dt, prev, "ring payload")};
    if (recv_first) std::swap(ops[0], ops[1]);
    auto work = pg.batch_send_recv(ops);
    work->wait();
    EXPECT_TRUE(work->is_completed());
    EXPECT_TRUE(same_elements(in, expected, dt))
        << "ring rank " << r << (recv_first ? " recv first" : " send first");
  }
}

// Both directions at once, as a pipeline's steady state does (activations forward, gradients
// back): sends to next and prev, receives from prev and next. In a world of 2 both neighbours
// are one rank, so the ops' order within the batch is what matches them up.
inline void check_batch_bidirectional(ProcessGroup& pg, size_t count, DType dt) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Bytes forward = make_input(r, count, dt, 22);
  Bytes backward = make_input(r, count, dt, 23);
  Bytes from_prev(count * dtype_size(dt)), from_next(count * dtype_size(dt));
  const std::vector<P2POp> ops{send_op(forward, count, dt, next, "activation"),
                               send_op(backward, count, dt, prev, "gradient"),
                               recv_op(from_prev, count, dt, prev, "activation"),
                               recv_op(from_next, count, dt, next, "gradient")};
  pg.batch_send_recv(ops)->wait();
  EXPECT_TRUE(same_elements(from_prev, make_input(prev, count, dt, 22), dt)) << "rank " << r;
  EXPECT_TRUE(same_elements(from_next, make_input(next, count, dt, 23), dt)) << "rank " << r;
}

// Pairs (0,1), (2,3), ...: each side posts "send 4 MiB to you, then receive 4 MiB from you".
// Blocking sends in that order would deadlock past the eager limit; a batch must not. An odd
// world's last rank sits out.
inline void check_batch_big_exchange(ProcessGroup& pg) {
  const int r = pg.rank();
  const int partner = r ^ 1;
  if (partner >= pg.size()) return;
  constexpr size_t kCount = (size_t{4} << 20) / sizeof(float);
  Bytes mine = make_input(r, kCount, DType::F32, 24);
  Bytes in(kCount * sizeof(float));
  const std::vector<P2POp> ops{send_op(mine, kCount, DType::F32, partner, "4 MiB block"),
                               recv_op(in, kCount, DType::F32, partner, "4 MiB block")};
  pg.batch_send_recv(ops)->wait();
  EXPECT_TRUE(same_elements(in, make_input(partner, kCount, DType::F32, 24), DType::F32))
      << "rank " << r;
}

// Several batches with the same peers, all posted before any is waited on: the k-th receive
// gets the k-th send.
inline void check_batch_order(ProcessGroup& pg, int batches, size_t count) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  const DType dt = DType::F32;
  std::vector<Bytes> out, in;
  for (int k = 0; k < batches; ++k) {
    out.push_back(make_input(r, count, dt, 100 + k));
    in.emplace_back(count * dtype_size(dt));
  }
  std::vector<WorkPtr> works;
  for (int k = 0; k < batches; ++k) {
    const std::vector<P2POp> ops{send_op(out[k], count, dt, next), recv_op(in[k], count, dt, prev)};
    works.push_back(pg.batch_send_recv(ops));
  }
  for (auto& work : works) work->wait();
  for (int k = 0; k < batches; ++k) {
    EXPECT_TRUE(same_elements(in[k], make_input(prev, count, dt, 100 + k), dt))
        << "batch " << k << " rank " << r;
  }
}

// Sends to one's own rank are copies, paired in order with the batch's receives from it, and
// may sit among ops with other ranks and with other dtypes.
inline void check_batch_self(ProcessGroup& pg) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Bytes a = make_input(r, 1001, DType::F32, 31);
  Bytes b = make_input(r, 7, DType::BF16, 32);
  Bytes ring = make_input(r, 5, DType::F32, 33);
  Bytes got_a(a.size()), got_b(b.size()), got_ring(ring.size());
  // In a world of one the ring ops are self ops too; this order pairs them all the same.
  const std::vector<P2POp> ops{
      send_op(a, 1001, DType::F32, r, "a"),     send_op(b, 7, DType::BF16, r, "b"),
      recv_op(got_a, 1001, DType::F32, r, "a"), send_op(ring, 5, DType::F32, next),
      recv_op(got_b, 7, DType::BF16, r, "b"),   recv_op(got_ring, 5, DType::F32, prev)};
  pg.batch_send_recv(ops)->wait();
  EXPECT_TRUE(same_elements(got_a, a, DType::F32)) << "rank " << r;
  EXPECT_TRUE(same_elements(got_b, b, DType::BF16)) << "rank " << r;
  EXPECT_TRUE(same_elements(got_ring, make_input(prev, 5, DType::F32, 33), DType::F32))
      << "rank " << r;
}

// The batch is rejected as a whole, with one line naming the op and its values, and nothing
// of it is posted: a ring exchange afterwards receives its own payload, not a leftover.
inline void check_batch_rejects(ProcessGroup& pg) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Bytes probe = make_input(r, 4, DType::F32, 41);
  Bytes other(16);
  auto expect_invalid = [&](const std::vector<P2POp>& ops, const std::vector<std::string>& words) {
    try {
      pg.batch_send_recv(ops);
      ADD_FAILURE() << "expected InvalidArgument, rank " << r;
    } catch (const InvalidArgument& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      for (const auto& word : words) EXPECT_NE(message.find(word), std::string::npos) << message;
    }
  };
  const std::string group = fmt::format("outside the group of {} ranks", n);
  expect_invalid({send_op(probe, 4, DType::F32, next), recv_op(other, 4, DType::F32, n, "probe")},
                 {"batch_send_recv", fmt::format("op 1 (recv of probe) peer {}", n), group});
  expect_invalid({send_op(probe, 4, DType::F32, -1)}, {"op 0 (send) peer -1", group});
  if (n > 1) {  // in a world of one, next is this rank and these would pair up
    expect_invalid({send_op(probe, 4, DType::F32, next), recv_op(other, 4, DType::F32, r, "echo")},
                   {"op 1 (recv of echo)", fmt::format("receives from its own rank {}", r)});
    expect_invalid({send_op(probe, 4, DType::F32, r)},
                   {"op 0 (send)", fmt::format("sends to its own rank {}", r)});
  }
  expect_invalid(
      {send_op(probe, 4, DType::F32, r), recv_op(other, 2, DType::F32, r)},
      {"op 0 (send) sends 16 bytes", "op 1 (recv), the receive it pairs with, expects 8"});
  expect_invalid({P2POp{P2POp::Kind::Recv, nullptr, 3, DType::F32, prev, "null"}},
                 {"op 0 (recv of null) has a null buffer for 3 elements"});

  Bytes mine = make_input(r, 4, DType::F32, 42);
  Bytes in(16);
  const std::vector<P2POp> ring{send_op(mine, 4, DType::F32, next),
                                recv_op(in, 4, DType::F32, prev)};
  pg.batch_send_recv(ring)->wait();
  EXPECT_TRUE(same_elements(in, make_input(prev, 4, DType::F32, 42), DType::F32))
      << "a rejected batch left a message behind, rank " << r;
}

inline void check_empty_batch(ProcessGroup& pg) {
  auto work = pg.batch_send_recv({});
  EXPECT_TRUE(work->is_completed());
  work->wait();
  work->wait(Timeout{0});
}

}  // namespace tessera::parallel::testing
