// The `mpi` backend: one rank per process over OpenMPI. Collectives run in issue order on a
// progress thread per group, as the same blocking MPI calls a program would make directly
// (so they use MPI's tuned algorithms); a small one (<= 64 KiB) issued while the group is idle
// runs inline instead, saving the thread hand-off. send/recv are posted on the progress thread
// as MPI_Isend/MPI_Irecv and complete independently (their timeout is enforced by wait()).
// Needs MPI_THREAD_MULTIPLE. 16-bit reductions are staged through f32 so they accumulate in f32.
// MPI errors become CommError (custom error handler
// + return codes). A collective that outlives its timeout (counted from issue) ends the job
// with MPI_Abort, from a per-process watchdog thread, whether or not anyone waits on it: a
// thread stuck inside MPI cannot be recovered, and the peers are released by the abort.
//
// Built when TESSERA_WITH_MPI; otherwise no_mpi.cc provides the same functions throwing
// NotCompiled, so callers carry no #ifdef.
#pragma once

#include <string_view>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

// True when this binary has the MPI backend.
bool mpi_compiled();
// Initialises MPI with MPI_THREAD_MULTIPLE, or checks the level if MPI is already initialised;
// throws CommError naming the provided level when it is lower.
void mpi_init(int* argc, char*** argv);
bool mpi_initialized();
void mpi_finalize();
// The world (a duplicate of MPI_COMM_WORLD, so our traffic never mixes with the caller's).
ProcessGroupPtr make_mpi_world();
// Ends every process of the job; for the launcher's last-resort handler.
[[noreturn]] void mpi_abort(std::string_view reason, int exit_code = 1);

}  // namespace tessera::parallel
