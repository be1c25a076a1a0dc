#!/usr/bin/env bash
# Configures and builds tessera into build/ (Release). Extra arguments go to cmake.
# CUDA is on when nvcc is found (set TESSERA_WITH_CUDA=OFF to skip it for a faster build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cuda_flag=()
if [ -n "${TESSERA_WITH_CUDA:-}" ]; then cuda_flag=(-DTESSERA_WITH_CUDA="$TESSERA_WITH_CUDA"); fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" "$@"
cmake --build build -j"$(nproc)"
