#!/usr/bin/env bash
# The real `tessera` CLI on bad input: each case must exit with status 1 (not a signal), print
# exactly one line on stderr, starting with "error: " and naming the problem. Then the happy
# path: `tessera prepare` on a small text and `tessera train` for 3 steps of `nano`.
#
# usage: cli_errors.sh PATH/TO/tessera      (ctest: the cli_errors test, label unit)
# Stops at the first failed expectation with a message saying what and why.
set -u

TESSERA=${1:-}
if [ -z "$TESSERA" ] || [ ! -x "$TESSERA" ]; then
  echo "cli_errors.sh: FAIL: give the tessera executable as the first argument (got '$TESSERA')" >&2
  exit 2
fi
case "$TESSERA" in
  /*) ;;
  *) TESSERA="$PWD/$TESSERA" ;;  # the checks below run from a scratch folder
esac

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tessera_cli.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 2

fail() {
  echo "cli_errors.sh: FAIL: $*" >&2
  exit 1
}

# expect_error NAME FRAGMENT COMMAND...: COMMAND must fail cleanly with one line naming FRAGMENT.
expect_error() {
  local name=$1 fragment=$2
  shift 2
  local rc=0
  "$@" >"$TMP/stdout" 2>"$TMP/stderr" </dev/null || rc=$?
  local err
  err=$(cat "$TMP/stderr")
  if [ "$rc" -ne 1 ]; then
    if [ "$rc" -gt 128 ]; then
      fail "$name: killed by signal $((rc - 128)) (a crash, not a clean error); stderr: $err"
    fi
    fail "$name: exit status $rc, want 1; stderr: $err"
  fi
  local lines
  lines=$(wc -l <"$TMP/stderr")
  [ "$lines" -eq 1 ] || fail "$name: $lines lines on stderr, want exactly 1:
$err"
  case "$err" in
    "error: "*) ;;
    *) fail "$name: stderr does not start with 'error: ': $err" ;;
  esac
  case "$err" in
    *"$fragment"*) ;;
    *) fail "$name: the error does not name the problem ('$fragment'): $err" ;;
  esac
  echo "ok   $name"
}

# write_config FILE TRAIN_PATH MODEL_JSON [EXTRA_ROOT_MEMBERS,]
write_config() {
  cat >"$1" <<EOF
{
  ${4:-}
  "train_micro_batch_size_per_gpu": 4,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
  "model": $3,
  "data": {"train": "$2", "seq_len": 32},
  "training": {"steps": 3, "seed": 1, "threads": 1},
  "output": {"dir": "$TMP/run"}
}
EOF
}

NANO='{"preset": "nano"}'

# --- a small corpus, prepared through the CLI ------------------------------------------------
text="$TMP/small.txt"
: >"$text"
for i in $(seq 1 60); do
  echo "First Citizen: Before we proceed any further, hear me speak. ($i)" >>"$text"
done
"$TESSERA" prepare --input "$text" --out-dir "$TMP/data" >"$TMP/prep.out" 2>&1 ||
  fail "prepare on a valid text exited $?: $(cat "$TMP/prep.out")"
GOOD="$TMP/data/small_train.bin"
[ -s "$GOOD" ] || fail "prepare did not write $GOOD"
[ -s "$TMP/data/small_val.bin" ] || fail "prepare did not write $TMP/data/small_val.bin"
echo "ok   prepare writes train/val token files"

# --- the happy path -----------------------------------------------------------------------------
write_config "$TMP/good.json" "$GOOD" "$NANO"
"$TESSERA" train --config "$TMP/good.json" >"$TMP/train.out" 2>&1 ||
  fail "train on the nano preset exited $?: $(tail -5 "$TMP/train.out")"
METRICS="$TMP/run/metrics.jsonl"
[ -f "$METRICS" ] || fail "train did not write $METRICS"
n=$(wc -l <"$METRICS")
[ "$n" -eq 3 ] || fail "$METRICS has $n lines, want 3 (one per step)"
for s in 1 2 3; do
  grep -q "\"step\":$s[,}]" "$METRICS" || fail "$METRICS has no line for step $s: $(cat "$METRICS")"
done
grep -q '"loss":' "$METRICS" || fail "$METRICS lines carry no loss"
[ -s "$TMP/run/model.safetensors" ] || fail "train did not save $TMP/run/model.safetensors"
echo "ok   train 3 steps of nano writes metrics.jsonl with 3 lines and the weights"

# --- bad token files ---------------------------------------------------------------------------
write_config "$TMP/missing_tokens.json" "$TMP/data/nope.bin" "$NANO"
expect_error "missing token file" "cannot open token file" \
  "$TESSERA" train --config "$TMP/missing_tokens.json"

size=$(wc -c <"$GOOD")
head -c $((size - 11)) "$GOOD" >"$TMP/trunc.bin"
write_config "$TMP/trunc.json" "$TMP/trunc.bin" "$NANO"
expect_error "truncated token file" "truncated" "$TESSERA" train --config "$TMP/trunc.json"

head -c 100 "$GOOD" >"$TMP/stub.bin"
write_config "$TMP/stub.json" "$TMP/stub.bin" "$NANO"
expect_error "token file shorter than its header" "shorter than its 1024-byte header" \
  "$TESSERA" train --config "$TMP/stub.json"

cp "$GOOD" "$TMP/magic.bin"
printf '\001\002\003\004' | dd of="$TMP/magic.bin" bs=1 count=4 conv=notrunc 2>/dev/null ||
  fail "could not patch the magic"
write_config "$TMP/magic.json" "$TMP/magic.bin" "$NANO"
expect_error "wrong magic" "has magic" "$TESSERA" train --config "$TMP/magic.json"

# Byte-level tokens include lower-case letters (>= 97): out of range for vocab 65.
write_config "$TMP/vocab.json" "$GOOD" '{"preset": "nano", "vocab_size": 65}'
expect_error "token id >= vocab" "vocab_size is 65" "$TESSERA" train --config "$TMP/vocab.json"

printf 'To be.\n' >"$TMP/tiny.txt"
"$TESSERA" prepare --input "$TMP/tiny.txt" --out-dir "$TMP/data" --val-fraction 0 >/dev/null 2>&1 ||
  fail "prepare on a 7-byte text failed"
write_config "$TMP/batch.json" "$TMP/data/tiny_train.bin" "$NANO"
expect_error "batch larger than the data" "fewer than one batch needs" \
  "$TESSERA" train --config "$TMP/batch.json"

# --- bad configs ---------------------------------------------------------------------------
printf '{"model": {"preset": "nano"},\n "data": }\n' >"$TMP/malformed.json"
expect_error "malformed JSON" "malformed JSON" "$TESSERA" train --config "$TMP/malformed.json"

write_config "$TMP/type.json" "$GOOD" "$NANO" '"steps_per_print": "ten",'
expect_error "wrong type" "'steps_per_print' must be an integer" \
  "$TESSERA" train --config "$TMP/type.json"

write_config "$TMP/type2.json" "$GOOD" '{"preset": "nano", "n_layer": "two"}'
expect_error "wrong type in a block" "'model.n_layer' must be an integer" \
  "$TESSERA" train --config "$TMP/type2.json"

write_config "$TMP/unknown.json" "$GOOD" "$NANO" '"gradient_cliping": 1.0,'
expect_error "unknown key" "did you mean 'gradient_clipping'" \
  "$TESSERA" train --config "$TMP/unknown.json"

write_config "$TMP/fp16.json" "$GOOD" "$NANO" '"fp16": {"enabled": true}, "bf16": {"enabled": true},'
expect_error "fp16 and bf16 both" "'fp16' and 'bf16' are both enabled" \
  "$TESSERA" train --config "$TMP/fp16.json"

write_config "$TMP/hyst.json" "$GOOD" "$NANO" '"fp16": {"enabled": true, "hysteresis": 0},'
expect_error "bad fp16 key value" "fp16.hysteresis = 0 must be at least 1" \
  "$TESSERA" train --config "$TMP/hyst.json"

expect_error "missing config file" "cannot read config file" \
  "$TESSERA" train --config "$TMP/no_such_config.json"

expect_error "malformed --set" "must look like key.path=value" \
  "$TESSERA" train --config "$TMP/good.json" --set noequals

expect_error "--set with a typo" "did you mean 'training.steps'" \
  "$TESSERA" train --config "$TMP/good.json" --set training.step=2

# --- prepare ---------------------------------------------------------------------------------
expect_error "prepare on a missing input" "cannot read input text" \
  "$TESSERA" prepare --input "$TMP/no_such_text.txt" --out-dir "$TMP/out"

# --- estimate and generate --------------------------------------------------------------------
expect_error "estimate with an unknown offload" "use none, cpu or nvme" \
  "$TESSERA" estimate --model nano --offload tape
expect_error "estimate with an unknown preset" "unknown model preset" \
  "$TESSERA" estimate --model gpt5
expect_error "generate without weights" "does not exist" \
  "$TESSERA" generate --weights "$TMP/none.safetensors"
estimate=$("$TESSERA" estimate --model nano --stage 3 --ranks 2 --batch 2) \
  || fail "estimate exited non-zero"
case "$estimate" in *total*) ;; *) fail "estimate printed no total: $estimate" ;; esac
offload=$("$TESSERA" estimate --model nano --stage 2 --ranks 2 --offload cpu) \
  || fail "estimate --offload cpu exited non-zero"
case "$offload" in *"host memory"*) ;; *) fail "estimate --offload cpu: $offload" ;; esac
expect_error "estimate with an unknown recompute" "use none, full or selective" \
  "$TESSERA" estimate --model nano --batch 2 --recompute most
# Activation checkpointing shrinks the activations the estimate prints (the runtime's layout).
acts() { "$TESSERA" estimate --model gpt2-124M --batch 2 --seq 128 --recompute "$1" |
  awk '$1 == "activations" { print $2 $3 }'; }
none=$(acts none) full=$(acts full) selective=$(acts selective)
[ -n "$none" ] && [ "$none" != "$full" ] && [ "$full" != "$selective" ] \
  || fail "estimate --recompute: none $none, full $full, selective $selective"

# Tensor parallelism: --ranks stays the data-parallel size; a size that does not divide the
# heads is refused naming both numbers.
expect_error "estimate with a tensor-parallel size that does not divide n_head" \
  "--tp 5 with --model gpt2-124M: tensor_model_parallel_size 5 does not divide n_head 12" \
  "$TESSERA" estimate --model gpt2-124M --tp 5
tp=$("$TESSERA" estimate --model gpt2-124M --stage 1 --ranks 2 --tp 2 --sequence-parallel \
  --batch 2 --seq 128) || fail "estimate --tp 2 exited non-zero"
case "$tp" in *"ranks: 2 data-parallel x 2 tensor-parallel = 4"*"padded to 50432"*) ;;
  *) fail "estimate --tp 2 did not name the layout and the padded vocabulary: $tp" ;; esac
"$TESSERA" estimate --help | grep -q -- "--tp" || fail "estimate --help does not list --tp"

echo "cli_errors.sh: all checks passed"
