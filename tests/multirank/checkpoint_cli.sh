#!/usr/bin/env bash
# Training checkpoints through the real command, on 2 thread ranks or 2 MPI processes:
#   a. resume: 8 steps at tp 2 saving every 3, resumed from step 3 into another run, give the
#      uninterrupted run's losses of steps 4-8 bit for bit (the JSON numbers as text), also
#      through a bare --resume; --resume latest on an empty checkpoint.dir starts at step 0;
#   b. `checkpoint verify` passes, `inspect` prints the layout, `export` writes the run's own
#      final model.safetensors byte for byte, which `tessera generate` reads;
#   c. one flipped bit in a shard: verify and resume fail naming the file as corrupt;
#   d. a missing shard, manifest version 99, another model: one-line errors naming them;
#   e. kill -9 (one rank process under MPI) at random moments of a run saving every step,
#      12 times: `latest` always names a checkpoint that verifies, every step folder
#      verifies, and the last restart runs to the end with the uninterrupted losses;
#   f. SIGTERM (every rank process under MPI, as Slurm sends it) mid-run at dp 2 ZeRO 1:
#      exit 0 with a checkpoint of the step it stopped after, named by `latest`; resuming
#      gives the uninterrupted run's later losses bit for bit;
#   g. a full disk (a 2 MiB tmpfs, skipped where it cannot be mounted): the save that does not
#      fit fails the run with "No space left on device", the previous checkpoint intact.
#   checkpoint_cli.sh TESSERA_BINARY threads|mpi
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
mode=$2
full="$work/full"
cleanup() {
  # Background runs left by a failure: only this script's (their output.dir is under $work).
  pkill -9 -f "^$tessera train .*output.dir=$work/" 2>/dev/null || true
  if mountpoint -q "$full" 2>/dev/null; then umount "$full" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 3, "warmup_type": "linear"}},
  "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
  "data": {"train": "$work/tiny_train.bin", "shuffle": true},
  "training": {"steps": 8, "seed": 7, "threads": 1}
}
JSON
# ranks ARGS...: `tessera train ARGS` on 2 ranks, as threads or MPI processes.
ranks() {
  if [ "$mode" = mpi ]; then
    timeout -k 10 120 "$tessera" launch -n 2 -- "$tessera" train "$@"
  else
    timeout -k 10 120 "$tessera" train --sim-ranks 2 "$@"
  fi
}
# run NAME ARGS...: a run with output.dir $work/NAME that must succeed (log $work/NAME.log).
run() {
  local name=$1
  shift
  local rc=0
  ranks -c "$work/config.json" --set output.dir="$work/$name" "$@" \
    >"$work/$name.txt" 2>"$work/$name.log" || rc=$?
  [ $rc = 0 ] || { cat "$work/$name.log"; fail "$name (exit $rc)"; }
}
# step_losses RUN_DIR [AFTER]: "step loss" of every step after AFTER (default 0), the loss as
# the JSON text, so equal lines mean bit-identical doubles.
step_losses() {
  sed -n 's/.*"loss":\([^,]*\),.*"step":\([0-9]*\),.*/\2 \1/p' "$1/metrics.jsonl" \
    | awk -v after="${2:-0}" '$1 > after'
}
# same_after REFERENCE RUN AFTER STEPS: steps AFTER+1..STEPS of RUN equal REFERENCE's exactly.
same_after() {
  local ref=$1 got=$2 after=$3 steps=$4
  [ "$(step_losses "$got" "$after" | wc -l)" = $((steps - after)) ] \
    || { step_losses "$got"; fail "$(basename "$got"): not steps $((after + 1))-$steps"; }
  diff <(step_losses "$ref" "$after") <(step_losses "$got" "$after") \
    || fail "$(basename "$got") after step $after differs from $(basename "$ref")"
}
# expect_error NAME PATTERN... -- COMMAND...: COMMAND fails, and its first error line holds
# every PATTERN (extended regexes).
expect_error() {
  local name=$1
  shift
  local patterns=()
  while [ "$1" != -- ]; do patterns+=("$1"); shift; done
  shift
  if "$@" >"$work/$name.txt" 2>"$work/$name.log"; then
    cat "$work/$name.log"
    fail "$name succeeded"
  fi
  local line
  # Thread ranks and the checkpoint command print "error: ..."; MPI ranks "[rank r] error: ...".
  line=$(cat "$work/$name.log" "$work/$name.txt" | grep -m1 -E '(^|\] )error: ' || true)
  for p in "${patterns[@]}"; do
    grep -qE -- "$p" <<<"$line" || { cat "$work/$name.log"; fail "$name: the error line lacks '$p'"; }
  done
  echo "ok: $name is refused: $(cut -c1-220 <<<"$line")"
}
verify() { "$tessera" checkpoint verify "$1" >"$work/verify.txt" 2>&1 || { cat "$work/verify.txt"; return 1; }; }

# --- a. exact resume -----------------------------------------------------------------------
t0=$SECONDS
run straight --tp 2
[ "$(step_losses "$work/straight" | wc -l)" = 8 ] || fail "the uninterrupted run logged no 8 steps"
run saved --tp 2 --set checkpoint.dir="$work/ck" --set checkpoint.save_interval=3
[ "$(cat "$work/ck/latest")" = step-00000008 ] || fail "latest is '$(cat "$work/ck/latest")', not step-00000008"
for s in 3 6 8; do [ -f "$work/ck/step-0000000$s/manifest.json" ] || fail "no checkpoint of step $s"; done
same_after "$work/straight" "$work/saved" 0 8  # saving does not change the run
run resumed --tp 2 --set checkpoint.dir="$work/ck_resumed" --resume "$work/ck/step-00000003"
grep -q "resuming from $work/ck/step-00000003 at step 3" "$work/resumed.log" \
  || { cat "$work/resumed.log"; fail "resumed did not resume at step 3"; }
same_after "$work/straight" "$work/resumed" 3 8
# A bare --resume reads checkpoint.dir's latest.
mkdir "$work/ck_bare"
cp -r "$work/ck/step-00000003" "$work/ck_bare/"
echo step-00000003 >"$work/ck_bare/latest"
run bare --tp 2 --set checkpoint.dir="$work/ck_bare" --resume
same_after "$work/straight" "$work/bare" 3 8
mkdir "$work/ck_empty"
run empty --tp 2 --set checkpoint.dir="$work/ck_empty" --resume latest
grep -q "starting at step 0" "$work/empty.log" || { cat "$work/empty.log"; fail "empty: no fresh start"; }
same_after "$work/straight" "$work/empty" 0 8
echo "ok: resumed from step 3 (a folder, a bare --resume) gives steps 4-8 bit for bit; an" \
  "empty checkpoint.dir starts at step 0 ($((SECONDS - t0)) s)"

# --- b. inspect, verify, export ------------------------------------------------------------
"$tessera" checkpoint verify "$work/ck" >"$work/verify.txt" 2>&1 || { cat "$work/verify.txt"; fail "verify"; }
grep -qE "^ok: [0-9]+ pieces, .* MiB, every CRC-32C matches and every tensor is covered" \
  "$work/verify.txt" || { cat "$work/verify.txt"; fail "verify printed no ok line"; }
"$tessera" checkpoint inspect "$work/ck" >"$work/inspect.txt" 2>&1 || { cat "$work/inspect.txt"; fail "inspect"; }
for p in "checkpoint $work/ck/step-00000008" \
  "layout: world 2 = dp 1 x tp 2 x pp 1 \(virtual pp 1\), ZeRO stage 0, sequence parallel off, precision f32" \
  "progress: step 8, optimizer steps 8" "data: 16 micro-batches consumed, micro-batch 2 x 32 tokens, shuffle on" \
  "rank-00001.bin" "h.1.mlp.c_fc.weight +\[128, 32\]"; do
  grep -qE -- "$p" "$work/inspect.txt" || { cat "$work/inspect.txt"; fail "inspect lacks '$p'"; }
done
"$tessera" checkpoint inspect --json "$work/ck/step-00000003" \
  | python3 -c 'import json, sys; m = json.load(sys.stdin); assert m["progress"]["step"] == 3, m["progress"]' \
  || fail "inspect --json is not the step-3 manifest"
"$tessera" checkpoint export "$work/ck" --out "$work/exported/model.safetensors" >"$work/export.txt" 2>&1 \
  || { cat "$work/export.txt"; fail "export"; }
cmp "$work/exported/model.safetensors" "$work/saved/model.safetensors" \
  || fail "the exported step 8 is not the run's own final model.safetensors"
"$tessera" generate --weights "$work/exported/model.safetensors" -n 5 >"$work/gen.txt" 2>&1 \
  || { cat "$work/gen.txt"; fail "generate does not read the export"; }
mkdir "$work/ck_none"
expect_error inspect_no_latest "neither manifest.json nor a 'latest' pointer" "ck_none" \
  -- "$tessera" checkpoint inspect "$work/ck_none"
echo "ok: verify, inspect, and export (= the run's own model.safetensors, read by generate)"

# --- c. a flipped bit ----------------------------------------------------------------------
cp -r "$work/ck/step-00000008" "$work/flipped"
python3 - "$work/flipped" rank-00001.bin <<'PY'
import json, os, sys
folder, name = sys.argv[1:]
path = os.path.join(folder, name)
# The byte in the middle of the file: the pieces lie end to end, so every byte is in one.
pieces = [p for p in json.load(open(os.path.join(folder, "manifest.json")))["pieces"]
          if p["file"] == name]
at = os.path.getsize(path) // 2
assert any(p["byte_offset"] <= at < p["byte_offset"] + p["bytes"] for p in pieces), at
with open(path, "r+b") as f:
    f.seek(at)
    b = f.read(1)[0]
    f.seek(at)
    f.write(bytes([b ^ 0x10]))
PY
expect_error verify_flipped "rank-00001.bin" "corrupt" -- "$tessera" checkpoint verify "$work/flipped"
expect_error resume_flipped "rank-00001.bin" "corrupt" \
  -- ranks -c "$work/config.json" --tp 2 --set output.dir="$work/o_flipped" --resume "$work/flipped"

# --- d. a missing shard, a newer format, another model -----------------------------------
cp -r "$work/ck/step-00000008" "$work/missing"
rm "$work/missing/rank-00001.bin"
expect_error verify_missing "rank-00001.bin" "missing" -- "$tessera" checkpoint verify "$work/missing"
expect_error resume_missing "rank-00001.bin" "missing" \
  -- ranks -c "$work/config.json" --tp 2 --set output.dir="$work/o_missing" --resume "$work/missing"
cp -r "$work/ck/step-00000008" "$work/v99"
python3 - "$work/v99/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["version"] = 99
json.dump(m, open(sys.argv[1], "w"))
PY
expect_error verify_v99 "version 99" -- "$tessera" checkpoint verify "$work/v99"
expect_error resume_v99 "version 99" \
  -- ranks -c "$work/config.json" --tp 2 --set output.dir="$work/o_v99" --resume "$work/v99"
expect_error resume_other_model "2 layers" "resume with the model it was saved from" \
  -- ranks -c "$work/config.json" --tp 2 --set output.dir="$work/o_model" --set model.n_layer=3 \
  --resume "$work/ck/step-00000003"
if [ "$mode" = threads ]; then
  [ "$(grep -c '^error: ' "$work/resume_other_model.log")" = 1 ] \
    || { cat "$work/resume_other_model.log"; fail "resume_other_model: not one error line"; }
fi

# --- background runs (e, f) ----------------------------------------------------------------
# start NAME ARGS...: `tessera train -c CONFIG ARGS` on 2 ranks in the background with output.dir
# $work/NAME, the marker rank_pids finds its rank processes by; sets job.
start() {
  local name=$1
  shift
  if [ "$mode" = mpi ]; then
    timeout -k 10 120 "$tessera" launch -n 2 -- "$tessera" train -c "$work/config.json" \
      --set output.dir="$work/$name" "$@" >>"$work/$name.txt" 2>>"$work/$name.log" &
  else
    timeout -k 10 120 "$tessera" train --sim-ranks 2 -c "$work/config.json" \
      --set output.dir="$work/$name" "$@" >>"$work/$name.txt" 2>>"$work/$name.log" &
  fi
  job=$!
}
# rank_pids NAME: the rank processes of run NAME (one under threads, one per rank under MPI).
rank_pids() { pgrep -f "^$tessera train .*output.dir=$work/$1( |\$)" || true; }
# await_ranks NAME: waits (up to 30 s) until every rank process of run NAME is up.
await_ranks() {
  local want=1
  [ "$mode" = mpi ] && want=2
  for _ in $(seq 300); do
    [ "$(rank_pids "$1" | wc -l)" -ge $want ] && return 0
    kill -0 "$job" 2>/dev/null || return 0  # it ended already
    sleep 0.1
  done
  fail "$1: the rank processes did not start"
}
# finish: the background run's exit status; 124 means it had to be stopped (it hung).
finish() {
  local rc=0
  wait "$job" 2>/dev/null || rc=$?
  [ $rc != 124 ] || fail "a background run did not end in time"
  return $rc
}

# --- e. kill -9 during saves ---------------------------------------------------------------
t0=$SECONDS
# Enough steps that 12 short runs do not reach the end (MPI runs start slower, so get fewer).
kill_steps=400
[ "$mode" = mpi ] && kill_steps=200
kill_args=(--set zero_optimization.stage=1
  --set train_micro_batch_size_per_gpu=1 --set gradient_accumulation_steps=1
  --set model.n_embd=128 --set model.block_size=64 --set training.steps="$kill_steps"
  --set checkpoint.dir="$work/ck_kill" --set checkpoint.save_interval=1
  --set checkpoint.keep_last=2)
run kill_ref "${kill_args[@]}" --set checkpoint.dir="$work/ck_kill_ref" --set checkpoint.save_interval=0
# mpirun ends the other rank at once (by default it sends SIGTERM, which a training rank takes
# as "stop after this step", and SIGKILL a second later): a whole crashed job, and 12 kills
# in bounded time (on a machine loaded by other work a kill cycle can take 10 s: at least 6
# must land within the 150 s).
export OMPI_MCA_odls_base_sigkill_timeout=0
kills=0
while [ $kills -lt 12 ] && [ $((SECONDS - t0)) -lt 150 ]; do
  saves=$(grep -c "checkpoint: saved" "$work/kill.log" 2>/dev/null || true)
  start kill "${kill_args[@]}" --resume
  await_ranks kill
  if [ $((kills % 2)) = 1 ]; then
    # Every other time after this run's first save, so that most kills land amid saves, not
    # in the start-up (which the others hit).
    for _ in $(seq 400); do
      [ "$(grep -c "checkpoint: saved" "$work/kill.log" || true)" -gt "${saves:-0}" ] && break
      kill -0 "$job" 2>/dev/null || break
      sleep 0.05
    done
  fi
  sleep "0.$((RANDOM % 7))$((RANDOM % 10))"
  mapfile -t pids < <(rank_pids kill)
  if [ ${#pids[@]} = 0 ]; then
    rc=0
    finish || rc=$?
    [ $rc = 0 ] || { cat "$work/kill.log"; fail "kill: the run ended with exit $rc before it was killed"; }
    break  # it ran to the end
  fi
  kill -9 "${pids[RANDOM % ${#pids[@]}]}" 2>/dev/null || true
  rc=0
  finish || rc=$?
  [ $rc != 0 ] || break  # it had just finished
  kills=$((kills + 1))
  if [ -f "$work/ck_kill/latest" ]; then
    verify "$work/ck_kill" || fail "after kill $kills: latest ($(cat "$work/ck_kill/latest")) does not verify"
  fi
  # Every step folder (a save's staging is step-N.tmp, a re-saved step's old copy step-N.old).
  for d in "$work"/ck_kill/step-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]; do
    [ -d "$d" ] || continue
    verify "$d" || { ls -la "$d"; fail "after kill $kills: $(basename "$d") does not verify"; }
  done
done
[ $kills -ge 6 ] || fail "only $kills kills landed in $((SECONDS - t0)) s (the run ended first, or the machine is too slow)"
saved_at=$(cat "$work/ck_kill/latest" 2>/dev/null || echo none)
: >"$work/kill.log"
# The rest without saves, which do not change the arithmetic.
start kill "${kill_args[@]}" --set checkpoint.save_interval=0 --resume
rc=0
finish || rc=$?
[ $rc = 0 ] || { cat "$work/kill.log"; fail "kill: the final restart exited $rc"; }
resumed_at=$(sed -n 's/.*resuming from .* at step \([0-9]*\) .*/\1/p' "$work/kill.log" | head -1)
if [ -z "$resumed_at" ] || [ "$resumed_at" -ge $kill_steps ]; then
  cat "$work/kill.log"
  fail "kill: the final restart did not resume before the end"
fi
same_after "$work/kill_ref" "$work/kill" "$resumed_at" $kill_steps
unset OMPI_MCA_odls_base_sigkill_timeout
echo "ok: $kills kills -9 during saves: latest and every step folder verify each time; the" \
  "restart from $saved_at ran steps $((resumed_at + 1))-$kill_steps bit for bit ($((SECONDS - t0)) s)"

# --- f. SIGTERM ----------------------------------------------------------------------------
t0=$SECONDS
term_args=(--set zero_optimization.stage=1 --set training.steps=100
  --set checkpoint.dir="$work/ck_term")
run term_ref "${term_args[@]}" --set checkpoint.dir="$work/ck_term_ref"
start term "${term_args[@]}"
await_ranks term
for _ in $(seq 300); do
  [ "$(wc -l 2>/dev/null <"$work/term/metrics.jsonl")" -ge 5 ] 2>/dev/null && break
  sleep 0.05
done
mapfile -t pids < <(rank_pids term)
[ ${#pids[@]} -ge 1 ] || fail "term: no rank process to signal"
kill -TERM "${pids[@]}"
rc=0
finish || rc=$?
[ $rc = 0 ] || { cat "$work/term.log"; fail "term: exit $rc after SIGTERM, not 0"; }
stopped=$(sed -n 's/.*SIGTERM received, stopping after step \([0-9]*\).*/\1/p' "$work/term.log" | head -1)
[ -n "$stopped" ] || { cat "$work/term.log"; fail "term: no 'SIGTERM received' line"; }
[ "$stopped" -lt 100 ] || fail "term: the run ended before the signal"
want=$(printf 'step-%08d' "$stopped")
[ "$(cat "$work/ck_term/latest")" = "$want" ] || fail "term: latest is '$(cat "$work/ck_term/latest")', not $want"
verify "$work/ck_term" || fail "term: the checkpoint of step $stopped does not verify"
[ "$(step_losses "$work/term" | tail -1 | cut -d' ' -f1)" = "$stopped" ] || fail "term: metrics go past step $stopped"
run term_resumed "${term_args[@]}" --resume
same_after "$work/term_ref" "$work/term_resumed" "$stopped" 100
echo "ok: SIGTERM after step $stopped: exit 0, latest = $want; the resumed run's later losses" \
  "are bit for bit ($((SECONDS - t0)) s)"

# --- g. a full disk ------------------------------------------------------------------------
mkdir "$full"
if ! mount -t tmpfs -o size=2m tmpfs "$full" 2>/dev/null; then
  echo "skipped: cannot mount tmpfs (full-disk case)"
  exit 0
fi
# ~118k parameters: a checkpoint of ~1.4 MiB (weights and both moments), one fits in 2 MiB.
full_args=(--set zero_optimization.stage=1 --set model.n_embd=64
  --set checkpoint.dir="$full/ck" --set checkpoint.keep_last=0)
run full1 "${full_args[@]}" --set training.steps=2
[ "$(cat "$full/ck/latest")" = step-00000002 ] || fail "full: no first checkpoint"
expect_error full2 "No space left on device" \
  -- ranks -c "$work/config.json" "${full_args[@]}" --set output.dir="$work/full2" --set training.steps=4 --resume
[ "$(cat "$full/ck/latest")" = step-00000002 ] || fail "full: latest is now '$(cat "$full/ck/latest")'"
verify "$full/ck" || fail "full: the step-2 checkpoint does not verify after the failed save"
[ -z "$(ls -d "$full"/ck/step-*.tmp 2>/dev/null)" ] || fail "full: the failed save's staging folder is left"
[ ! -e "$full/ck/step-00000004" ] || fail "full: a step-4 folder appeared"
echo "ok: a save that does not fit fails the run, step 2 intact"
