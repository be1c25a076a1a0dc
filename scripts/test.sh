#!/usr/bin/env bash
# Every test: set up, build (CUDA included when nvcc is present), run ctest, then a short
# libFuzzer run (10 s per parser, clang build in build-fuzz/). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh -DTESSERA_BUILD_TESTS=ON
scripts/check_layers.sh
(cd build && ctest --output-on-failure -j2 "$@")
scripts/fuzz.sh 10
