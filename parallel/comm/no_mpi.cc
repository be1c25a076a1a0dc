// Built when TESSERA_WITH_MPI is off: the MPI entry points exist and say how to get them.
#include <cstdlib>

#include "parallel/comm/mpi_group.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace tessera::parallel {
namespace {
constexpr const char* kHowTo =
    "tessera was built without MPI; reconfigure with -DTESSERA_WITH_MPI=ON (needs an MPI "
    "library) or use the thread backend";
}

bool mpi_compiled() { return false; }
void mpi_init(int*, char***) { TS_THROW(NotCompiled, "mpi_init: {}", kHowTo); }
bool mpi_initialized() { return false; }
void mpi_finalize() {}
ProcessGroupPtr make_mpi_world() { TS_THROW(NotCompiled, "make_mpi_world: {}", kHowTo); }
void mpi_abort(std::string_view reason, int exit_code) {
  spdlog::critical("aborting: {}", reason);
  std::_Exit(exit_code);
}

}  // namespace tessera::parallel
