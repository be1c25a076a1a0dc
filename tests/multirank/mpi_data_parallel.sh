#!/usr/bin/env bash
# Data parallelism under mpirun reproduces single-rank training: the same global batch over
# 1 rank (accumulating), 2 and 4 MPI ranks gives the same per-step losses within 1e-5
# relative over 10 fp32 steps. Then the failure path: SIGKILL of one rank ends the whole job
# with a non-zero exit within a bounded time.
#   mpi_data_parallel.sh TESSERA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_clipping": 0.5,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "zero_optimization": {"stage": 0, "reduce_bucket_size": 5000},
  "model": {"preset": "nano"},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": 10, "threads": 1}
}
JSON
launch() {  # ranks accumulation run_dir
  local ranks=$1 accum=$2 dir=$3
  if [ "$ranks" -eq 1 ]; then
    "$tessera" train -c "$work/config.json" --set gradient_accumulation_steps="$accum" \
      --set output.dir="$dir" 2>"$dir.log" || { cat "$dir.log"; fail "single rank run"; }
  else
    "$tessera" launch -n "$ranks" -- "$tessera" train -c "$work/config.json" \
      --set gradient_accumulation_steps="$accum" --set output.dir="$dir" 2>"$dir.log" \
      || { cat "$dir.log"; fail "$ranks-rank run"; }
  fi
}

launch 1 4 "$work/r1"
for ranks in 2 4; do
  launch "$ranks" $((4 / ranks)) "$work/r$ranks"
  same_losses "$work/r1" "$work/r$ranks" "$ranks ranks" \
    || fail "$ranks MPI ranks diverge from the single-rank run"
  echo "ok: $ranks MPI ranks match 1 rank over 10 steps"
done

# Failure: kill one rank of a long run; mpirun must end every rank and exit non-zero.
"$tessera" launch -n 2 -- "$tessera" train -c "$work/config.json" \
  --set training.steps=100000 --set output.dir="$work/kill" >"$work/kill.log" 2>&1 &
launcher=$!
for _ in $(seq 100); do
  [ -s "$work/kill/metrics.jsonl" ] && break
  sleep 0.1
done
victim=$(pgrep -f "output.dir=$work/kill" | grep -v "^$launcher\$" | tail -1 || true)
[ -n "$victim" ] || fail "no rank process found to kill"
start=$(date +%s)
kill -9 "$victim"
status=0
timeout 60 tail --pid="$launcher" -f /dev/null || fail "the job still runs 60 s after a rank was killed"
wait "$launcher" || status=$?
[ "$status" -ne 0 ] || fail "the job exited 0 after a rank was killed"
echo "ok: killing one rank ended the job with exit $status in $(( $(date +%s) - start )) s"
