// A job that fails on purpose, for tests.cmake's failure entries: `throw` (rank 1 throws and
// the top-level handler aborts), `kill` (rank 1 SIGKILLs itself), `absent` (rank 1 never joins
// the collective; the others time out), `absent_inline` (the same with a small collective, which
// runs inline on the caller's thread, so only the watchdog can end it). Every mode must end the
// whole job non-zero quickly while the surviving ranks sit in an all_reduce.
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
      if (mode == "absent" || mode == "absent_inline") {
        std::this_thread::sleep_for(std::chrono::hours(1));
      }
    }
    if (mode == "absent_inline") {
      for (;;) world->barrier()->wait();
    }
    for (;;) world->all_reduce(buf.data(), buf.size(), tessera::DType::F32)->wait();
  } catch (const std::exception& e) {
    mpi_abort(e.what());
  }
}
