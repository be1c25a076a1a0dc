#!/usr/bin/env bash
# Activation checkpointing under mpirun: 2 MPI ranks at ZeRO stages 0 and 3, fp32 and bf16,
# with full (every block; groups of 2 with host checkpoints) and selective recomputation give
# exactly the losses of the same run without it (recomputation repeats the same arithmetic;
# the thread-rank golden test checks the bits, this one the printed losses).
#   mpi_activation_checkpointing.sh TESSERA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 0.5,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "zero_optimization": {"stage": 0, "reduce_bucket_size": 5000,
                        "stage3_param_persistence_threshold": 100},
  "model": {"preset": "nano"},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": 6, "threads": 1}
}
JSON

run() {  # run NAME ARGS...: 2 MPI ranks
  local name=$1
  shift
  "$tessera" launch -n 2 -- "$tessera" train -c "$work/config.json" --set output.dir="$work/$name" \
    "$@" 2>"$work/$name.log" || { cat "$work/$name.log"; fail "$name"; }
}

for precision in fp32 bf16; do
  extra=()
  [ "$precision" = bf16 ] && extra=(--set bf16.enabled=true)
  for stage in 0 3; do
    base="$precision-s$stage"
    run "$base" --set zero_optimization.stage=$stage "${extra[@]}"
    for policy in full groups selective; do
      case $policy in
        full) block='{"recompute_granularity": "full"}' ;;
        groups) block='{"recompute_granularity": "full", "recompute_num_layers": 2, "cpu_checkpointing": true}' ;;
        selective) block='{"recompute_granularity": "selective"}' ;;
      esac
      name="$base-$policy"
      run "$name" --set zero_optimization.stage=$stage "${extra[@]}" \
        --set "activation_checkpointing=$block"
      grep -q "activation checkpointing: $( [ $policy = selective ] && echo selective || echo full)" \
        "$work/$name.log" || { cat "$work/$name.log"; fail "$name did not checkpoint"; }
      same_losses "$work/$base" "$work/$name" "$name" 6 0 \
        || fail "$name changes the losses of $base"
      echo "ok: $name on 2 MPI ranks gives the losses of $base"
    done
  done
done
