#!/usr/bin/env bash
# The main job: set up, tokenise the bundled Shakespeare, train the demo model, sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
TESSERA_WITH_CUDA="${TESSERA_WITH_CUDA:-OFF}" scripts/build.sh -DTESSERA_BUILD_TESTS=OFF -DTESSERA_BUILD_BENCH=OFF
build/launch/tessera prepare --input data/tinyshakespeare.txt --out-dir data
build/launch/tessera train --config configs/demo.json "$@"
