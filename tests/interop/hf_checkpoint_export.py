#!/usr/bin/env python3
"""A training checkpoint saved at a parallel layout must export to the GPT-2 transformers loads.

Usage: hf_checkpoint_export.py TESSERA_EXE DUMP_LOGITS_EXE WORK_DIR

Trains a 4-head, 2-layer GPT-2 for 10 steps with `tessera train --sim-ranks 4 --tp 2 --pp 2`
(each rank holds half of every layer of one pipeline stage), saving a checkpoint every 5
steps. `tessera checkpoint export` turns the step-5 checkpoint (not the run's end, so the
export cannot be the saved model in disguise) into WORK_DIR/export/model.safetensors;
transformers.GPT2LMHeadModel.from_pretrained loads it with no weight missing, unexpected or
resized, and its logits on fixed tokens match tessera's own logits of the same file on one
rank (interop_dump_logits --logits) within 1e-4. The export of the step-10 checkpoint is the
run's own final model.safetensors byte for byte.

Exits 77 (ctest's SKIP_RETURN_CODE) when torch, transformers or numpy are not importable.
"""
import filecmp
import json
import os
import shutil
import subprocess
import sys

from interop_common import load_gpt2, read_logits, skipped

TOLERANCE = 1e-4


def run(args):
    """Runs a command; on failure prints its output and raises."""
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        raise SystemExit(f"FAIL: {' '.join(args[:3])} ... exited {result.returncode}")
    return result.stdout


def train_and_export(tessera, work):
    """Trains with checkpoints at tp 2 x pp 2 and exports steps 5 and 10. Returns the folders
    of the step-5 export, the step-10 export and the run's own saved model."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = os.environ.get("TESSERA_SOURCE_DIR", ".")
    with open(os.path.join(source, "data", "tinyshakespeare.txt"), "rb") as f:
        text = f.read(60000)
    with open(os.path.join(work, "text.txt"), "wb") as f:
        f.write(text)
    run([tessera, "prepare", "--input", os.path.join(work, "text.txt"), "--out-dir", work,
         "--name", "tiny", "--val-fraction", "0"])
    ckpt = os.path.join(work, "checkpoints")
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
        "data": {"train": os.path.join(work, "tiny_train.bin")},
        "training": {"steps": 10, "threads": 1},
        "checkpoint": {"dir": ckpt, "save_interval": 5},
        "output": {"dir": os.path.join(work, "run")},
    }
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    run([tessera, "train", "-c", os.path.join(work, "config.json"), "--sim-ranks", "4", "--tp", "2",
         "--pp", "2"])
    layout = run([tessera, "checkpoint", "inspect", os.path.join(ckpt, "step-00000005")])
    if "dp 1 x tp 2 x pp 2" not in layout:
        raise SystemExit(f"FAIL: the checkpoint was not saved at tp 2 x pp 2:\n{layout}")
    exports = []
    for step in (5, 10):
        out = os.path.join(work, f"export-{step}")
        run([tessera, "checkpoint", "export", os.path.join(ckpt, f"step-{step:08d}"), "--out",
             os.path.join(out, "model.safetensors")])
        exports.append(out)
    return exports[0], exports[1], os.path.join(work, "run")


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    tessera, dump, work = sys.argv[1:]
    try:
        import numpy as np
        import torch
        import transformers
    except ImportError as e:
        return skipped("torch/transformers", e, "torch transformers safetensors numpy")

    exported, final, saved = train_and_export(tessera, work)
    if not filecmp.cmp(os.path.join(final, "model.safetensors"),
                       os.path.join(saved, "model.safetensors"), shallow=False):
        print("FAIL: the step-10 export is not the run's own model.safetensors")
        return 1
    out = os.path.join(work, "logits")
    subprocess.run([dump, "--logits", exported, out], check=True)
    tokens, expected = read_logits(np, out)
    B, T, V = expected.shape

    model, problems = load_gpt2(transformers, torch, exported)
    if problems:
        print(f"FAIL: transformers did not load every weight as is: {problems}")
        return 1
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    diff = float(np.abs(logits - expected).max())
    print(f"step-5 checkpoint of a tp 2 x pp 2 run, exported, logits [{B}, {T}, {V}]: "
          f"max |hf - tessera| = {diff:.3e} (max |logit| {float(np.abs(expected).max()):.3f}, "
          f"tolerance {TOLERANCE:g})")
    if not diff <= TOLERANCE:
        print("FAIL: logits differ")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
