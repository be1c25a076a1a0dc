# Shared by the multi-rank scripts (sourced): a scratch folder with a small Shakespeare
# token file, and the loss comparison against a reference run.
#   source lib.sh TESSERA_BINARY   sets: tessera, work; defines fail, losses, same_losses
tessera=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

head -c 60000 "${TESSERA_SOURCE_DIR:-.}/data/tinyshakespeare.txt" > "$work/text.txt"
"$tessera" prepare --input "$work/text.txt" --out-dir "$work" --name tiny --val-fraction 0 2>/dev/null

# losses RUN_DIR: the per-step losses of a run, one per line.
losses() { sed -n 's/.*"loss":\([^,]*\).*/\1/p' "$1/metrics.jsonl"; }

# same_losses REFERENCE_DIR RUN_DIR LABEL [STEPS] [TOLERANCE]: every step within TOLERANCE
# relative (default 1e-5).
same_losses() {
  paste <(losses "$1") <(losses "$2") | awk -v label="$3" -v steps="${4:-10}" -v tol="${5:-1e-5}" '
    { d = $1 - $2; if (d < 0) d = -d
      if (d > tol * $1) { printf "step %d: reference %s, %s %s\n", NR, $1, label, $2; bad = 1 } }
    END { if (NR != steps) { print "expected " steps " steps, got " NR; bad = 1 } exit bad }'
}
