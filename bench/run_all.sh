#!/usr/bin/env bash
# Runs every benchmark behind docs/PERFORMANCE.md in one session, so ratios are measured
# side by side. Needs a build (scripts/build.sh) and, for the PyTorch twin, Debian's
# python3-torch (skipped when absent). Takes ~22 minutes on 2 cores.
#   bench/run_all.sh [build-dir] | tee bench/results.md
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin=$build/bench
tessera=$build/launch/tessera
torch_python=/usr/bin/python3
have_torch() { "$torch_python" -c "import torch" 2>/dev/null; }

echo "## $(date -u +%F) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo; echo "### FMA peak"; "$bin/bench_fma_peak"
for lib in openblas blis; do
  if [ -x "$bin/bench_gemm_$lib" ]; then
    for t in 1 2; do echo; echo "### GEMM candidates, $lib"; "$bin/bench_gemm_$lib" "$t"; done
  fi
done
echo; echo "### 16-bit GEMMs (gemm16) beside sgemm"; "$bin/bench_gemm16"
for model in "gpt2-124M 4 256 3" "tiny 8 256 5"; do
  set -- $model
  echo; echo "### training step: tessera $1"
  "$bin/bench_train" --model "$1" --batch "$2" --seq "$3" --threads 1,2 --steps "$4"
  if have_torch; then
    echo; echo "### training step: PyTorch $1"
    "$torch_python" bench/pytorch_gpt2.py --model "$1" --batch "$2" --seq "$3" --threads 1,2 --steps "$4"
  fi
done

echo; echo "### collectives"
"$bin/bench_collectives" --backend thread --ranks 2
if [ -x "$(command -v mpirun)" ]; then
  root=(); [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
  mpirun -np 2 "${root[@]}" --bind-to none "$bin/bench_collectives" --backend mpi
fi

echo; echo "### ZeRO stages, 2 ranks"
"$bin/bench_zero" --model gpt2-124M --batch 4 --seq 256 --ranks 2 --steps 2

echo; echo "### CPU Adam on a 1.5B-parameter update, against the memory roof"
"$bin/bench_adam" --rounds 3

echo; echo "### tensor parallelism (t = 2, with and without SP) against DP = 2"
"$bin/bench_tp" --models gpt2-124M,gpt2-350M --batch 1 --seq 128 --steps 3 --rounds 2

echo; echo "### activation checkpointing (none / full / selective)"
"$bin/bench_recompute" --model gpt2-124M --batch 4 --seq 256 --steps 3 --rounds 2
"$bin/bench_recompute" --model gpt2-124M --dtype bf16 --batch 4 --seq 256 --steps 3 --rounds 2
"$bin/bench_recompute" --model gpt2-350M --batch 2 --seq 256 --steps 2 --rounds 2

echo; echo "### data-parallel scaling (tiny, vocab 256, B=8, T=256, 1 thread per rank)"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$tessera" prepare --input data/tinyshakespeare.txt --out-dir "$work" --name ts 2>/dev/null
cat > "$work/c.json" <<JSON
{"train_micro_batch_size_per_gpu": 8, "model": {"preset": "tiny", "vocab_size": 256},
 "data": {"train": "$work/ts_train.bin", "seq_len": 256},
 "training": {"steps": 12, "threads": 1}}
JSON
mean_tok_s() {  # mean tokens/s of steps 3..12 (the first ones fault pages in)
  sed -n 's/.*"tokens_per_s":\([^,}]*\).*/\1/p' "$1/metrics.jsonl" | tail -n +3 |
    awk '{s += $1} END {printf "%.0f", s / NR}'
}
"$tessera" train -c "$work/c.json" --set output.dir="$work/one" 2>/dev/null
"$tessera" train -c "$work/c.json" --sim-ranks 2 --set output.dir="$work/threads" 2>/dev/null
"$tessera" launch -n 2 -- "$tessera" train -c "$work/c.json" --set output.dir="$work/mpi" 2>/dev/null
one=$(mean_tok_s "$work/one"); thr=$(mean_tok_s "$work/threads"); mpi=$(mean_tok_s "$work/mpi")
echo "| ranks | tokens/s | vs 1 rank |"; echo "|---|---|---|"
echo "| 1 | $one | 1.00x |"
awk -v a="$thr" -v b="$one" 'BEGIN {printf "| 2 thread ranks | %d | %.2fx |\n", a, a / b}'
awk -v a="$mpi" -v b="$one" 'BEGIN {printf "| 2 MPI ranks | %d | %.2fx |\n", a, a / b}'
