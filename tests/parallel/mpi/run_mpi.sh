#!/usr/bin/env bash
# Runs an MPI test job with the flags this machine needs, and optionally checks that it FAILS
# within a time bound (the failure-behaviour tests).
#   run_mpi.sh NP [--expect-failure MAX_SECONDS] PROGRAM [ARGS...]
set -u
np=$1
shift
expect_failure=""
if [[ "${1:-}" == "--expect-failure" ]]; then
  expect_failure=$2
  shift 2
fi
flags=(--oversubscribe --bind-to none)
if [[ "$(id -u)" == 0 ]]; then
  flags+=(--allow-run-as-root)
fi
start=$(date +%s)
mpirun -np "$np" "${flags[@]}" "$@"
rc=$?
elapsed=$(($(date +%s) - start))
if [[ -z "$expect_failure" ]]; then
  exit $rc
fi
if [[ $rc == 0 ]]; then
  echo "run_mpi.sh: expected the job to fail, but it exited 0" >&2
  exit 1
fi
if ((elapsed > expect_failure)); then
  echo "run_mpi.sh: the job failed (exit $rc) but took ${elapsed}s, more than ${expect_failure}s" >&2
  exit 1
fi
echo "run_mpi.sh: the job failed as expected (exit $rc) in ${elapsed}s"
exit 0
