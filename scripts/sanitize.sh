#!/usr/bin/env bash
# The test suite under the sanitizers: every test under AddressSanitizer + UndefinedBehavior-
# Sanitizer (build-asan/), and the thread-rank, communicator and multi-threaded memory tests
# under ThreadSanitizer (build-tsan/). CUDA is off in both (nothing here runs it). Exits
# non-zero on any report.
#
#   scripts/sanitize.sh [asan|tsan]...     (default: both)   extra ctest arguments: CTEST_ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(asan tsan)
scripts/install_deps.sh

# The thread-rank and communicator tests: thread collectives, send/recv and failures, the
# data-parallel and ZeRO equivalences on thread ranks, the memory tracker's concurrency, the
# host tier's copy threads (the memcpy engine, its pipeline, offload cpu on thread ranks), the
# thread-rank command line, and the MPI jobs (the MPI communicator runs a progress thread).
tsan_tests='Thread|ZeroEquivalence|ZeroStage|DataParallelEquivalence|LossScalingAcrossRanks|MemoryTracker|ScopedTracker|MemcpyCopyEngine|HostTier|OptimizerOnHost|thread_ranks_cli|mpi'

configure_and_build() {  # dir sanitizer
  cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_SANITIZER="$2" \
    -DTESSERA_WITH_CUDA=OFF -DTESSERA_BUILD_TESTS=ON -DTESSERA_BUILD_BENCH=OFF >/dev/null
  cmake --build "$1" -j"$(nproc)"
}

status=0
for run in "${runs[@]}"; do
  start=$SECONDS
  case "$run" in
    asan)
      configure_and_build build-asan address,undefined
      # OpenMPI, hwloc and libevent keep allocations to process exit by design; lsan.supp
      # names them. Their libraries have no frame pointers, so the MPI jobs record malloc
      # stacks with the slow unwinder (else the frames read "<unknown module>" and no
      # suppression matches); the rest keep the fast one.
      asan="detect_leaks=1:strict_init_order=1:check_initialization_order=1"
      export LSAN_OPTIONS="suppressions=$repo/tests/sanitizers/lsan.supp:print_suppressions=0"
      export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
      (cd build-asan && ASAN_OPTIONS="$asan" ctest --output-on-failure -j2 -LE mpi ${CTEST_ARGS:-}) || status=1
      (cd build-asan && ASAN_OPTIONS="$asan:fast_unwind_on_malloc=0" \
        ctest --output-on-failure -j2 -L mpi ${CTEST_ARGS:-}) || status=1
      unset LSAN_OPTIONS UBSAN_OPTIONS
      ;;
    tsan)
      configure_and_build build-tsan thread
      # libgomp is not built with TSan, so the ordering its barriers give is invisible to it:
      # one OpenMP thread per rank keeps the reports to the threads tessera itself starts.
      export OMP_NUM_THREADS=1
      export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$repo/tests/sanitizers/tsan.supp"
      (cd build-tsan && ctest --output-on-failure -j2 -R "$tsan_tests" ${CTEST_ARGS:-}) || status=1
      unset OMP_NUM_THREADS TSAN_OPTIONS
      ;;
    *)
      echo "sanitize: unknown run '$run' (asan or tsan)" >&2
      exit 2
      ;;
  esac
  echo "sanitize: $run finished in $((SECONDS - start)) s"
done
exit $status
