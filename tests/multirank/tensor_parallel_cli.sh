#!/usr/bin/env bash
# Tensor parallelism through the real command: `tessera train --tp 2` on 2 ranks, with
# sequence parallelism and with ZeRO-1 over 2 data-parallel groups on 4 ranks, gives the
# single-rank run's losses within 1e-5 relative over 10 fp32 steps, samples at the end, and
# saves the whole model (Hugging Face layout) that the single-rank run saves, to within the
# few ulps the ranks' partial sums differ by. A bad --tp is a one-line error.
#   tensor_parallel_cli.sh TESSERA_BINARY threads|mpi
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$1"
mode=$2
cat > "$work/config.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_clipping": 0.5,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
  "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
  "data": {"train": "$work/tiny_train.bin"},
  "training": {"steps": 10, "threads": 1, "sample_tokens": 16}
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
timeout 120 "$tessera" train -c "$work/config.json" --set gradient_accumulation_steps=2 \
  --set output.dir="$work/one" >"$work/one.txt" 2>"$work/one.log" \
  || { cat "$work/one.log"; fail "single rank run"; }
run_case() {  # NAME RANKS ARGS...
  local name=$1 n=$2
  shift 2
  ranks "$n" -c "$work/config.json" --tp 2 --set output.dir="$work/$name" "$@" \
    >"$work/$name.txt" 2>"$work/$name.log" || { cat "$work/$name.log"; fail "$name"; }
  grep -q "tensor parallel: 2 ranks per layer" "$work/$name.log" \
    || { cat "$work/$name.log"; fail "$name did not run tensor-parallel"; }
  same_losses "$work/one" "$work/$name" "$name" || fail "$name diverges from the single-rank run"
  [ "$(wc -c <"$work/$name.txt")" -ge 16 ] || fail "$name printed no sample"
  python3 - "$work/one/model.safetensors" "$work/$name/model.safetensors" "$name" <<'PY'
import json, struct, sys
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        out[name] = (t["shape"], struct.unpack(f"<{(b - a) // 4}f", data[a:b]))
    return out
one, tp = tensors(sys.argv[1]), tensors(sys.argv[2])
assert one.keys() == tp.keys(), f"{sys.argv[3]}: other tensors saved: {sorted(set(one) ^ set(tp))}"
worst = 0.0
for name, (shape, values) in one.items():
    assert tp[name][0] == shape, f"{sys.argv[3]}: {name} saved as {tp[name][0]}, not {shape}"
    worst = max(worst, max(abs(x - y) for x, y in zip(values, tp[name][1])))
assert worst < 1e-4, f"{sys.argv[3]}: saved weights differ from one rank's by {worst}"
print(f"{sys.argv[3]}: {len(one)} tensors in the Hugging Face layout, max |diff| {worst:.2e}")
PY
  echo "ok: $name matches 1 rank over 10 steps, samples, and saves the whole model"
}
run_case tp2 2 --set gradient_accumulation_steps=2
run_case tp2_sp 2 --sequence-parallel --set gradient_accumulation_steps=2
run_case tp2_dp2_zero1 4 --set zero_optimization.stage=1 --sequence-parallel
if ranks 3 -c "$work/config.json" --tp 3 --set output.dir="$work/bad" >/dev/null 2>"$work/bad.log"; then
  fail "--tp 3 with 4 heads ran"
fi
grep -q "tensor_model_parallel_size 3 does not divide model.n_head 4" "$work/bad.log" \
  || { cat "$work/bad.log"; fail "--tp 3 gave no clear error"; }
echo "ok: --tp 3 with 4 heads is refused with the numbers"
