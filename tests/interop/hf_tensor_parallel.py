#!/usr/bin/env python3
"""A model trained tensor-parallel must save the whole GPT-2 that transformers loads.

Usage: hf_tensor_parallel.py TESSERA_EXE DUMP_LOGITS_EXE WORK_DIR

Trains a 4-head GPT-2 for 20 steps with `tessera train --sim-ranks 2 --tp 2
--sequence-parallel` (each rank holds half of every layer and of the vocabulary), then loads
the saved WORK_DIR/run with transformers.GPT2LMHeadModel.from_pretrained (no weight missing,
unexpected or resized) and compares its logits on fixed tokens with tessera's own logits of
the same file on one rank (interop_dump_logits --logits), within 1e-4.

Exits 77 (ctest's SKIP_RETURN_CODE) when torch, transformers or numpy are not importable.
"""
import json
import os
import shutil
import subprocess
import sys

from interop_common import load_gpt2, read_logits, skipped

TOLERANCE = 1e-4


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

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = os.environ.get("TESSERA_SOURCE_DIR", ".")
    with open(os.path.join(source, "data", "tinyshakespeare.txt"), "rb") as f:
        text = f.read(60000)
    with open(os.path.join(work, "text.txt"), "wb") as f:
        f.write(text)
    subprocess.run([tessera, "prepare", "--input", os.path.join(work, "text.txt"), "--out-dir", work,
                    "--name", "tiny", "--val-fraction", "0"], check=True, capture_output=True)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 256, "block_size": 32},
        "data": {"train": os.path.join(work, "tiny_train.bin")},
        "training": {"steps": 20, "threads": 1},
        "output": {"dir": os.path.join(work, "run")},
    }
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    subprocess.run([tessera, "train", "-c", os.path.join(work, "config.json"), "--sim-ranks", "2",
                    "--tp", "2", "--sequence-parallel"], check=True, capture_output=True)
    out = os.path.join(work, "logits")
    subprocess.run([dump, "--logits", os.path.join(work, "run"), out], check=True)
    tokens, expected = read_logits(np, out)
    B, T, V = expected.shape

    model, problems = load_gpt2(transformers, torch, os.path.join(work, "run"))
    if problems:
        print(f"FAIL: transformers did not load every weight as is: {problems}")
        return 1
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    diff = float(np.abs(logits - expected).max())
    print(f"tensor-parallel run's weights, logits [{B}, {T}, {V}]: max |hf - tessera| = {diff:.3e} "
          f"(max |logit| {float(np.abs(expected).max()):.3f}, tolerance {TOLERANCE:g})")
    if not diff <= TOLERANCE:
        print("FAIL: logits differ")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
