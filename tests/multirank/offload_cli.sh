#!/usr/bin/env bash
# Optimizer offload through the real command, on 2 thread ranks or 2 MPI processes:
#   a. a bf16 ZeRO-1 run with the optimizer's states on NVMe (a folder here) gives the losses
#      of the same run with them in memory bit for bit, and leaves no file in nvme_path; so
#      does one rank (threads mode), "cpu" against "nvme", and one rank at stage 3 with the
#      parameters on disk too (the same losses and the same model.safetensors);
#   b. nvme_path missing / a file: one-line errors naming it, before the first step;
#   c. an I/O error injected mid-run (TESSERA_OFFLOAD_FAIL_AFTER): every rank stops, non-zero,
#      with "Input/output error" on the error line, well within the timeout (no hang);
#   d. a full disk (a 64 KiB tmpfs, skipped where it cannot be mounted): refused at start,
#      naming the space needed and free;
#   e. `tessera estimate --offload nvme` prints the sub-group buffers and the swap file,
#      `--offload cpu` the host tier's page-locked pool.
#   The host tier ("cpu" on 2 ranks) gives the losses without offload bit for bit (a.), and
#   pin_memory beyond the locked-memory limit is refused at start (threads mode, as root).
#   offload_cli.sh TESSERA_BINARY threads|mpi
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
mode=$2
small="$work/small"
cleanup() {
  if mountpoint -q "$small" 2>/dev/null; then umount "$small" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "bf16": {"enabled": true},
  "zero_optimization": {"stage": 1, "sub_group_size": 3000},
  "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": 6, "seed": 7, "threads": 1}
}
JSON
ranks() {
  if [ "$mode" = mpi ]; then
    timeout -k 10 120 "$tessera" launch -n 2 -- "$tessera" train "$@"
  else
    timeout -k 10 120 "$tessera" train --sim-ranks 2 "$@"
  fi
}
run() {
  local name=$1
  shift
  local rc=0
  ranks -c "$work/config.json" --set output.dir="$work/$name" "$@" \
    >"$work/$name.txt" 2>"$work/$name.log" || rc=$?
  [ $rc = 0 ] || { cat "$work/$name.log"; fail "$name (exit $rc)"; }
}
step_losses() { sed -n 's/.*"loss":\([^,]*\),.*"step":\([0-9]*\),.*/\2 \1/p' "$1/metrics.jsonl"; }
expect_error() {
  local name=$1
  shift
  local patterns=()
  while [ "$1" != -- ]; do patterns+=("$1"); shift; done
  shift
  local start=$SECONDS
  if "$@" >"$work/$name.txt" 2>"$work/$name.log"; then
    cat "$work/$name.log"
    fail "$name succeeded"
  fi
  local line
  line=$(cat "$work/$name.log" "$work/$name.txt" | grep -m1 -E '(^|\] )error: ' || true)
  for p in "${patterns[@]}"; do
    grep -qE -- "$p" <<<"$line" || { cat "$work/$name.log"; fail "$name: the error line lacks '$p'"; }
  done
  echo "ok: $name is refused in $((SECONDS - start)) s: $(cut -c1-220 <<<"$line")"
}
nvme=(--set zero_optimization.offload_optimizer.device=nvme
      --set zero_optimization.offload_optimizer.buffer_count=9
      --set zero_optimization.offload_optimizer.pipeline=true)

# --- a. bit for bit, nothing left behind ------------------------------------------------
run in_memory
mkdir "$work/swap"
run on_disk "${nvme[@]}" --set zero_optimization.offload_optimizer.nvme_path="$work/swap"
[ "$(step_losses "$work/on_disk" | wc -l)" = 6 ] || fail "the offloaded run logged no 6 steps"
diff <(step_losses "$work/in_memory") <(step_losses "$work/on_disk") \
  || fail "the losses with the optimizer on disk differ from those with it in memory"
[ -z "$(ls -A "$work/swap")" ] || fail "swap files left in nvme_path: $(ls -A "$work/swap")"
echo "ok: optimizer on NVMe gives the in-memory losses bit for bit, nothing left in nvme_path"
# The host tier (ZeRO-Offload, "cpu"): the copy pipeline runs, the losses stay the same.
run on_host --set zero_optimization.offload_optimizer.device=cpu
diff <(step_losses "$work/in_memory") <(step_losses "$work/on_host") \
  || fail "the losses with the optimizer in the host tier differ from those without offload"
grep -q "offload: optimizer states in the host tier" "$work/on_host.log" \
  || { cat "$work/on_host.log"; fail "no host-tier line in the log"; }
echo "ok: optimizer in the host tier (offload cpu) gives the losses without offload bit for bit"
# One rank keeps its state as a one-rank shard: "cpu" (in memory) against "nvme".
if [ "$mode" = threads ]; then
  for device in cpu nvme; do
    timeout -k 10 120 "$tessera" train -c "$work/config.json" --set output.dir="$work/one_$device" \
      "${nvme[@]}" --set zero_optimization.offload_optimizer.device=$device \
      --set zero_optimization.offload_optimizer.nvme_path="$work/swap" \
      >"$work/one_$device.txt" 2>"$work/one_$device.log" \
      || { cat "$work/one_$device.log"; fail "one rank with the optimizer on $device"; }
  done
  grep -q "offload: optimizer states on disk in $work/swap" "$work/one_nvme.log" \
    || { cat "$work/one_nvme.log"; fail "one rank: no offload line in the log"; }
  diff <(step_losses "$work/one_cpu") <(step_losses "$work/one_nvme") \
    || fail "one rank: the losses with the optimizer on disk differ"
  echo "ok: one rank with the optimizer on NVMe gives its in-memory losses bit for bit"
  # Stage 3 with the parameters on disk as well: the same losses and the same saved model
  # (written tensor by tensor from the swap files) as stage 3 in memory.
  stage3=(--set zero_optimization.stage=3 --set zero_optimization.stage3_param_persistence_threshold=100)
  params=(--set zero_optimization.offload_param.device=nvme
          --set zero_optimization.offload_param.nvme_path="$work/swap"
          --set zero_optimization.offload_param.max_in_cpu=0)
  for name in stage3_cpu stage3_nvme; do
    extra=()
    [ $name = stage3_nvme ] && extra=("${nvme[@]}" "${params[@]}" --set zero_optimization.offload_optimizer.nvme_path="$work/swap")
    [ $name = stage3_cpu ] && extra=(--set zero_optimization.offload_optimizer.device=cpu)
    timeout -k 10 120 "$tessera" train -c "$work/config.json" --set output.dir="$work/$name" \
      "${stage3[@]}" "${extra[@]}" >"$work/$name.txt" 2>"$work/$name.log" \
      || { cat "$work/$name.log"; fail "one rank, $name"; }
  done
  grep -q "offload: parameters on disk in $work/swap" "$work/stage3_nvme.log" \
    || { cat "$work/stage3_nvme.log"; fail "one rank: no parameter offload line in the log"; }
  diff <(step_losses "$work/stage3_cpu") <(step_losses "$work/stage3_nvme") \
    || fail "one rank, stage 3: the losses with the parameters on disk differ"
  cmp "$work/stage3_cpu/model.safetensors" "$work/stage3_nvme/model.safetensors" \
    || fail "one rank, stage 3: the saved model with the parameters on disk differs"
  [ -z "$(ls -A "$work/swap")" ] || fail "swap files left in nvme_path: $(ls -A "$work/swap")"
  echo "ok: one rank at stage 3 with optimizer and parameters on NVMe: the same losses and model file"
fi

# pin_memory against the locked-memory limit, as a process without CAP_IPC_LOCK sees it
# (root drops it with setpriv; a 64 KiB soft limit): refused at start with the limit named.
if [ "$mode" = threads ] && [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  expect_error pin_limit "pinned memory" "ulimit -l" "pin_memory false" -- \
    bash -c 'ulimit -S -l 64 && exec setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock "$@"' _ \
    "$tessera" train -c "$work/config.json" --set output.dir="$work/pinned" \
    --set zero_optimization.offload_optimizer.device=cpu \
    --set zero_optimization.offload_optimizer.pin_memory=true
else
  echo "skipped: pin_memory limit (needs root and setpriv)"
fi

# --- b. bad nvme_path -------------------------------------------------------------------
expect_error missing_path "nvme_path" "$work/nowhere" "does not exist" -- \
  ranks -c "$work/config.json" --set output.dir="$work/missing" "${nvme[@]}" \
  --set zero_optimization.offload_optimizer.nvme_path="$work/nowhere"
touch "$work/a_file"
expect_error file_path "$work/a_file" -- \
  ranks -c "$work/config.json" --set output.dir="$work/file" "${nvme[@]}" \
  --set zero_optimization.offload_optimizer.nvme_path="$work/a_file"

# --- c. an I/O error mid-run --------------------------------------------------------------
export TESSERA_COMM_TIMEOUT_S=30
start=$SECONDS
TESSERA_OFFLOAD_FAIL_AFTER=60 expect_error io_error "Input/output error" "swap file" -- \
  ranks -c "$work/config.json" --set output.dir="$work/eio" "${nvme[@]}" \
  --set zero_optimization.offload_optimizer.nvme_path="$work/swap"
[ $((SECONDS - start)) -lt 60 ] || fail "the I/O error took $((SECONDS - start)) s to stop the run"
grep -q '"step":1,' "$work/eio/metrics.jsonl" 2>/dev/null \
  || echo "note: the injected error came before step 1 ended"
[ -z "$(ls -A "$work/swap")" ] || fail "swap files left after the I/O error"

# --- d. a full disk -------------------------------------------------------------------------
mkdir -p "$small"
if mount -t tmpfs -o size=64k tmpfs "$small" 2>/dev/null; then
  expect_error full_disk "free" "needs" -- \
    ranks -c "$work/config.json" --set output.dir="$work/full" "${nvme[@]}" \
    --set zero_optimization.offload_optimizer.nvme_path="$small"
  umount "$small"
else
  echo "skipped: cannot mount tmpfs (full-disk case)"
fi

# --- e. the estimate ------------------------------------------------------------------------
est=$("$tessera" estimate --model gpt2-124M --stage 1 --dtype bf16 --offload nvme \
  --sub-group-size 10000000 --buffer-count 9)
grep -q "sub-group buffers" <<<"$est" || fail "estimate --offload nvme: $est"
grep -qE "^  disk +[0-9.]+ (MiB|GiB)" <<<"$est" || fail "estimate --offload nvme has no disk row: $est"
echo "ok: estimate --offload nvme: $(grep -E 'optimizer|disk' <<<"$est" | tr -s ' ' | tr '\n' ';')"
est=$("$tessera" estimate --model gpt2-124M --stage 1 --dtype bf16 --offload cpu)
grep -qE "^  pinned +[0-9.]+ (MiB|GiB)" <<<"$est" || fail "estimate --offload cpu has no pinned row: $est"
echo "ok: estimate --offload cpu: $(grep -E 'optimizer|pinned' <<<"$est" | tr -s ' ' | cut -c1-60 | tr '\n' ';')"
echo "offload_cli ($mode): all passed"
