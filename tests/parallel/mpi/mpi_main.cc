// main for the MPI test binaries: MPI_THREAD_MULTIPLE init, gtest output from rank 0 only, and
// the job fails if any rank fails. An exception escaping a test aborts the job, the same
// last-resort handling the launcher uses.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <exception>

#include "parallel/comm/mpi_group.h"
#include "runtime/core/logging.h"

int main(int argc, char** argv) {
  setenv("TESSERA_LOG_LEVEL", "warn", /*overwrite=*/0);
  tessera::parallel::mpi_init(&argc, &argv);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  tessera::init_logging(rank, size);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = 0;
  try {
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  } catch (const std::exception& e) {
    tessera::parallel::mpi_abort(e.what());
  }
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) std::fprintf(stderr, "rank %d had failures\n", rank);
  tessera::parallel::mpi_finalize();
  return any_failed;
}
