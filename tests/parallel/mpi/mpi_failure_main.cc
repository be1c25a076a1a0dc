// A job that fails on purpose, for tests.cmake's failure entries: `throw` (rank 1 throws and
// the top-level handler aborts), `kill` (rank 1 SIGKILLs itself), `absent` (rank 1 never joins
// the collective; the others time out), `absent_inline` (the same with a small collective, which
// runs inline on the caller's thread, so only the watchdog can end it), `p2p_absent` (rank 1
// never sends what the others wait for in a batch_send_recv; the batch's wait times out). Every
// mode must end the whole job non-zero quickly while the surviving ranks sit in a collective
// or a batch.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "parallel/comm/mpi_group.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

using namespace tessera::parallel;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "throw";
  mpi_init(&argc, &argv);
  try {
    auto world = make_mpi_world();
    tessera::init_logging(world->rank(), world->size());
    std::vector<float> buf(1 << 16, 1.0f);
    world->all_reduce(buf.data(), buf.size(), tessera::DType::F32)->wait();  // everyone is up
    if (world->rank() == 1) {
      if (mode == "throw") throw tessera::InvalidArgument("rank 1 failed on purpose");
      if (mode == "kill") raise(SIGKILL);
      if (mode == "absent" || mode == "absent_inline" || mode == "p2p_absent") {
        std::this_thread::sleep_for(std::chrono::hours(1));
      }
    }
    if (mode == "absent_inline") {
      for (;;) world->barrier()->wait();
    }
    if (mode == "p2p_absent") {
      // The survivors exchange among themselves first (those ops complete), then wait on a
      // receive from rank 1: its timeout must end the job with a message naming it.
      const int n = world->size();
      const int r = world->rank();
      const int next = (r + 1) % n == 1 ? (r + 2) % n : (r + 1) % n;
      const int prev = (r + n - 1) % n == 1 ? (r + n - 2) % n : (r + n - 1) % n;
      std::vector<float> in(buf.size()), from_1(buf.size());
      using Kind = P2POp::Kind;
      const std::vector<P2POp> ops{
          {Kind::Send, buf.data(), buf.size(), tessera::DType::F32, next, "warm-up block"},
          {Kind::Recv, in.data(), in.size(), tessera::DType::F32, prev, "warm-up block"},
          {Kind::Recv, from_1.data(), from_1.size(), tessera::DType::F32, 1,
           "activation of micro-batch 0 from pipeline stage 1"}};
      for (;;) world->batch_send_recv(ops)->wait();
    }
    for (;;) world->all_reduce(buf.data(), buf.size(), tessera::DType::F32)->wait();
  } catch (const std::exception& e) {
    mpi_abort(e.what());
  }
}
