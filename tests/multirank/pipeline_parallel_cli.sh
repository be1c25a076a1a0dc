#!/usr/bin/env bash
# Pipeline parallelism through the real command: `tessera train --pp 2` on 2 ranks, with
# `--tp 2` on 4, with `--virtual-pp 2` (interleaved) on 2, and over 2 data-parallel pipelines
# on 4 ranks gives the single-rank run's losses within 1e-5 relative over 5 fp32 steps (the
# same global batch), exits 0 and saves the whole model. A traced step (training.trace_file)
# writes one valid Chrome trace with every rank's events. Bad input is a one-line error:
# `--pp 3` on 2 ranks names the sizes, `--pp 2` at ZeRO stage 3 is refused.
#   pipeline_parallel_cli.sh TESSERA_BINARY threads|mpi
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
mode=$2
steps=5
cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 4,
  "gradient_clipping": 0.5,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "model": {"n_layer": 4, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": $steps, "threads": 1}
}
JSON
# ranks N ARGS...: the command on N ranks, as threads or MPI processes.
ranks() {
  local n=$1
  shift
  if [ "$mode" = mpi ]; then
    timeout 300 "$tessera" launch -n "$n" -- "$tessera" train "$@"
  else
    timeout 300 "$tessera" train --sim-ranks "$n" "$@"
  fi
}
timeout 120 "$tessera" train -c "$work/config.json" --set output.dir="$work/one" \
  >"$work/one.txt" 2>"$work/one.log" || { cat "$work/one.log"; fail "single rank run"; }

run_case() {  # NAME RANKS STAGES ARGS...
  local name=$1 n=$2 stages=$3
  shift 3
  local start=$SECONDS
  ranks "$n" -c "$work/config.json" --set output.dir="$work/$name" "$@" \
    >"$work/$name.txt" 2>"$work/$name.log" || { cat "$work/$name.log"; fail "$name (exit $?)"; }
  grep -q "pipeline parallel: $stages stages" "$work/$name.log" \
    || { cat "$work/$name.log"; fail "$name did not run a $stages-stage pipeline"; }
  same_losses "$work/one" "$work/$name" "$name" "$steps" \
    || fail "$name diverges from the single-rank run"
  [ -s "$work/$name/model.safetensors" ] || fail "$name saved no model"
  echo "ok: $name matches 1 rank over $steps steps ($((SECONDS - start)) s)"
}
run_case pp2 2 2 --pp 2
run_case pp2_tp2 4 2 --pp 2 --tp 2
grep -q "tensor parallel: 2 ranks per layer" "$work/pp2_tp2.log" \
  || { cat "$work/pp2_tp2.log"; fail "pp2_tp2 did not run tensor-parallel"; }
run_case pp2_v2 2 2 --pp 2 --virtual-pp 2
grep -q "2 stages x 2 chunk(s)" "$work/pp2_v2.log" \
  || { cat "$work/pp2_v2.log"; fail "pp2_v2 did not interleave 2 chunks"; }
# 2 pipelines side by side: 2 micro-batches each make the same global batch of 8.
run_case pp2_dp2 4 2 --pp 2 --schedule gpipe --set gradient_accumulation_steps=2

# A traced step: one Chrome trace file holding every rank's events.
ranks 4 -c "$work/config.json" --pp 2 --tp 2 --set output.dir="$work/traced" \
  --set training.trace_file="$work/trace.json" --set training.trace_step=2 \
  >/dev/null 2>"$work/traced.log" || { cat "$work/traced.log"; fail "traced run"; }
[ -s "$work/trace.json" ] || { cat "$work/traced.log"; fail "no trace file written"; }
python3 - "$work/trace.json" 4 <<'PY' || fail "the trace is not a valid trace of every rank"
import json, sys
with open(sys.argv[1]) as f:
    trace = json.load(f)
world = int(sys.argv[2])
events = trace["traceEvents"]
spans = [e for e in events if e.get("ph") == "X"]
ranks = sorted({e["pid"] for e in spans})
assert ranks == list(range(world)), f"spans from ranks {ranks}, expected 0..{world - 1}"
for r in range(world):
    mine = [e for e in spans if e["pid"] == r]
    cats = {e["cat"] for e in mine}
    assert {"forward", "backward"} <= cats, f"rank {r}: categories {sorted(cats)}"
    assert any(e["cat"] in ("send", "recv") for e in mine), f"rank {r}: no transfers"
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in mine), f"rank {r}: negative times"
names = {e["pid"]: e["args"]["name"] for e in events
         if e.get("ph") == "M" and e.get("name") == "process_name"}
assert sorted(names) == list(range(world)), f"process names for {sorted(names)}"
print(f"trace: {len(spans)} spans over {world} ranks, e.g. {names[world - 1]}")
PY
echo "ok: training.trace_file writes a valid trace with every rank's spans"

# Bad input: one-line errors naming the numbers.
expect_error() {  # NAME RANKS PATTERN ARGS...
  local name=$1 n=$2 pattern=$3
  shift 3
  if ranks "$n" -c "$work/config.json" --set output.dir="$work/$name" "$@" \
    >/dev/null 2>"$work/$name.log"; then
    fail "$name ran"
  fi
  grep -q -- "$pattern" "$work/$name.log" || { cat "$work/$name.log"; fail "$name gave no clear error"; }
  if [ "$mode" = threads ]; then
    # One rank's message, on one line (the thread ranks fail alike; the first is printed).
    [ "$(grep -c '^error: ' "$work/$name.log")" = 1 ] \
      || { cat "$work/$name.log"; fail "$name: not one error line"; }
    grep '^error: ' "$work/$name.log" | grep -q -- "$pattern" \
      || { cat "$work/$name.log"; fail "$name: the error line lacks '$pattern'"; }
  fi
  echo "ok: $name is refused: $(grep -m1 -- "$pattern" "$work/$name.log" | cut -c1-200)"
}
expect_error pp3_on_2 2 \
  "pipeline_model_parallel_size 3 needs a multiple of 3 ranks, this run has 2" --pp 3
expect_error pp2_zero3 2 \
  "zero_optimization.stage 3 with parallelism.pipeline_model_parallel_size 2 is not" \
  --pp 2 --set zero_optimization.stage=3
