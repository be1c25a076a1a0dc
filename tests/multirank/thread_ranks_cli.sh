#!/usr/bin/env bash
# `tessera train --sim-ranks 2` through the real command at every ZeRO stage: it finishes
# (the end-of-run sample must not wait on a collective the other ranks never join), and its
# sample is the single-rank run's, token for token, for the same global batch and seed.
# Also in bf16 at stage 3 (losses within 16-bit rounding, a sample printed).
#   thread_ranks_cli.sh TESSERA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "zero_optimization": {"stage": 0, "stage3_param_persistence_threshold": 100},
  "model": {"preset": "nano"},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": 3, "threads": 1, "sample_tokens": 24, "seed": 5}
}
JSON
timeout 120 "$tessera" train -c "$work/config.json" --set gradient_accumulation_steps=2 \
  --set output.dir="$work/one" >"$work/one.txt" 2>"$work/one.log" \
  || { cat "$work/one.log"; fail "single rank run"; }
for stage in 0 1 2 3; do
  timeout 120 "$tessera" train -c "$work/config.json" --sim-ranks 2 \
    --set zero_optimization.stage="$stage" --set output.dir="$work/s$stage" \
    >"$work/s$stage.txt" 2>"$work/s$stage.log" \
    || { cat "$work/s$stage.log"; fail "stage $stage on 2 thread ranks (exit $?)"; }
  cmp -s "$work/one.txt" "$work/s$stage.txt" \
    || fail "stage $stage on 2 thread ranks sampled differently: $(cat "$work/s$stage.txt")"
  echo "ok: stage $stage on 2 thread ranks finishes and samples as 1 rank does"
done

# bf16 at stage 3: the sample comes from the fp32 master weights gathered from the shards,
# and the 3-step losses follow the single-rank bf16 run's (16-bit reductions: 5e-4).
timeout 120 "$tessera" train -c "$work/config.json" --set bf16.enabled=true \
  --set gradient_accumulation_steps=2 --set output.dir="$work/bf16-one" \
  >"$work/bf16-one.txt" 2>"$work/bf16-one.log" || { cat "$work/bf16-one.log"; fail "bf16 single rank"; }
timeout 120 "$tessera" train -c "$work/config.json" --sim-ranks 2 --set bf16.enabled=true \
  --set zero_optimization.stage=3 --set output.dir="$work/bf16-s3" \
  >"$work/bf16-s3.txt" 2>"$work/bf16-s3.log" || { cat "$work/bf16-s3.log"; fail "bf16 stage 3 on 2 thread ranks"; }
[ "$(wc -c <"$work/bf16-s3.txt")" -ge 24 ] || fail "bf16 stage 3 printed no sample"
same_losses "$work/bf16-one" "$work/bf16-s3" "bf16 stage 3 on 2 thread ranks" 3 5e-4 \
  || fail "bf16 stage 3 on 2 thread ranks diverges from the single-rank bf16 run"
echo "ok: bf16 stage 3 on 2 thread ranks finishes, samples, and matches 1 rank"
