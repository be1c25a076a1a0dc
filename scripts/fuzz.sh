#!/usr/bin/env bash
# Fuzzes every parser of outside input (tests/fuzz) with libFuzzer under ASan + UBSan:
# configures build-fuzz/ with clang, builds only the harnesses, replays the seed and
# regression inputs, then runs each harness for SECONDS (default 10), one process at a time.
# The corpus accumulates in build-fuzz/fuzz/corpus/, so repeated runs continue a campaign.
# Exits non-zero on any finding and names the crashing input (build-fuzz/fuzz/artifacts/).
# Usage: scripts/fuzz.sh [SECONDS]   (TESSERA_FUZZ_JOBS: build parallelism, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
build=build-fuzz

mkdir -p "$build"
# MPI off: no harness needs a communicator, and LeakSanitizer would report OpenMPI's leaks.
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_FUZZ=ON -DTESSERA_SANITIZER=address,undefined \
  -DTESSERA_WITH_CUDA=OFF -DTESSERA_WITH_MPI=OFF -DTESSERA_BUILD_BENCH=OFF \
  -DTESSERA_FUZZ_SECONDS="$seconds" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"${TESSERA_FUZZ_JOBS:-2}" --target tessera_fuzz_harnesses

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
cd "$build"
status=0
ctest -R '^fuzz_regression_' --output-on-failure || status=1
# '^fuzz$': ctest -L takes a regular expression, and only the fuzzing entries carry this label.
ctest -L '^fuzz$' --output-on-failure || status=1
echo
cat fuzz/logs/*.summary 2>/dev/null || true
if [[ $status -ne 0 ]]; then
  echo "fuzz: FINDINGS. Crashing inputs are under $PWD/fuzz/artifacts/<harness>/ (named in the"
  echo "output above); reproduce one with: $build/tests/fuzz_<harness> <input>"
fi
exit "$status"
