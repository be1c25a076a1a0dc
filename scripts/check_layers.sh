#!/usr/bin/env bash
# Checks that #includes point only down the layer order (docs/ARCHITECTURE.md):
#   1 runtime/core  2 runtime/kernels  3 parallel  4 memory  5 models  6 runtime/engine  7 launch
# tests/ and bench/ may include anything.
set -euo pipefail
cd "$(dirname "$0")/.."

layer_of() {
  case "$1" in
    runtime/core/*) echo 1 ;;
    runtime/kernels/*) echo 2 ;;
    parallel/*) echo 3 ;;
    memory/*) echo 4 ;;
    models/*) echo 5 ;;
    runtime/engine/*) echo 6 ;;
    launch/*) echo 7 ;;
    *) echo 0 ;;
  esac
}

bad=0
while IFS= read -r file; do
  own=$(layer_of "$file")
  [ "$own" -eq 0 ] && continue
  while IFS= read -r inc; do
    target=$(layer_of "$inc")
    if [ "$target" -gt "$own" ]; then
      echo "layer violation: $file (layer $own) includes $inc (layer $target)"
      bad=1
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
done < <(git ls-files 'runtime/*' 'parallel/*' 'memory/*' 'models/*' 'launch/*' | grep -E '\.(h|cc|cu|cuh)$')

if [ "$bad" -ne 0 ]; then
  echo "check_layers: includes must point down the layer order; move the code or the include"
  exit 1
fi
echo "check_layers: includes point down the layers"
