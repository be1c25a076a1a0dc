#!/usr/bin/env bash
# Runs one libFuzzer harness for a fixed time (the fuzz_<name> ctest entries call this):
# one process, one worker. Under WORK (the build tree's fuzz/): corpus/NAME grows across runs,
# artifacts/NAME/ receives crashing inputs, logs/NAME.log is libFuzzer's output,
# logs/NAME.summary the one-line result, and logs/campaign.tsv one row per run (time, name,
# seconds, executions, coverage, corpus units, exit status).
# Usage: run_fuzzer.sh BINARY NAME SECONDS WORK SOURCE_DIR (SOURCE_DIR: tests/fuzz)
set -euo pipefail
binary=$1 name=$2 seconds=$3 work=$4 src=$5
corpus=$work/corpus/$name
artifacts=$work/artifacts/$name/
log=$work/logs/$name.log
mkdir -p "$corpus" "$artifacts" "$work/logs"

# -timeout: an input that takes seconds is a finding (a quadratic loop, a huge allocation
# being filled), not something to wait for. -rss_limit_mb also caps single mallocs, so a
# size read from the input and trusted shows up as an out-of-memory finding.
args=(-max_total_time="$seconds" -timeout=3 -rss_limit_mb=2048 -print_final_stats=1
      -artifact_prefix="$artifacts")
if [[ -f $src/$name.dict ]]; then args+=(-dict="$src/$name.dict"); fi
inputs=("$corpus" "$src/seeds/$name")  # new inputs go to the first, the others are read only
if [[ -d $src/regressions/$name ]]; then inputs+=("$src/regressions/$name"); fi

rc=0
start=$SECONDS
"$binary" "${args[@]}" "${inputs[@]}" >"$log" 2>&1 || rc=$?

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)
corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)  # in memory, seeds too
files=$(find "$corpus" -type f | wc -l)  # on disk, in the writable corpus
elapsed=$((SECONDS - start))
summary="fuzz_$name: ${elapsed}s (of ${seconds}s), ${execs:-?} executions, cov ${cov:-?}, corpus ${corp:-?} units ($files files in corpus/$name), exit $rc"
echo "$summary" | tee "$work/logs/$name.summary"
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$name" "$elapsed" "${execs:-?}" \
  "${cov:-?}" "${corp:-?}" "$rc" >>"$work/logs/campaign.tsv"
if [[ $rc -ne 0 ]]; then
  tail -n 80 "$log"
  echo "fuzz_$name: FINDING (exit $rc); full log: $log"
  grep -oE 'Test unit written to [^ ]+' "$log" | sed "s/^Test unit written to /fuzz_$name: crashing input: /" || true
fi
exit "$rc"
