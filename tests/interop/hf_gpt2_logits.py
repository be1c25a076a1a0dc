#!/usr/bin/env python3
"""A GPT-2 saved by tessera must load in Hugging Face transformers and give the same logits.

Usage: hf_gpt2_logits.py DUMP_LOGITS_EXE WORK_DIR

Runs tessera's interop_dump_logits (a small GPT-2 initialised by tessera, saved as
safetensors in f32, f16 and bf16, and its logits on fixed tokens), then:
  1. loads WORK_DIR/f32 with transformers.GPT2LMHeadModel.from_pretrained, checks that no
     weight was missing, unexpected or resized, and compares its logits with tessera's
     (absolute tolerance 1e-4);
  2. checks the f16 and bf16 files bit for bit against torch's own rounding of the f32
     tensors (both round to nearest even), which also proves safetensors' strict reader
     accepts tessera's files;
  3. the other direction: saves the loaded model with transformers' save_pretrained and
     checks tessera reads it back (config.json and weights) into the identical flat buffer.

Exits 77 (ctest's SKIP_RETURN_CODE) when torch, transformers, safetensors or numpy are not
importable: the test is optional and CI does not install torch.
"""
import os
import subprocess
import sys

from interop_common import load_gpt2, read_logits, parse_args, run_helper, skipped

TOLERANCE = 1e-4


def main() -> int:
    exe, work = parse_args(__doc__)
    try:
        import numpy as np
        import torch
        import transformers
        from safetensors.torch import load_file
    except ImportError as e:
        return skipped("torch/transformers", e, "torch transformers safetensors numpy")

    run_helper(exe, work)
    tokens, expected = read_logits(np, work)
    B, T, V = expected.shape

    # 1. Logits through transformers.
    model, problems = load_gpt2(transformers, torch, os.path.join(work, "f32"))
    if problems:
        print(f"FAIL: transformers did not load every weight as is: {problems}")
        return 1
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        print("FAIL: lm_head is not tied to wte in the loaded model")
        return 1
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    diff = float(np.abs(logits - expected).max())
    scale = float(np.abs(expected).max())
    print(f"logits [{B}, {T}, {V}]: max |hf - tessera| = {diff:.3e} (max |logit| {scale:.3f}, "
          f"tolerance {TOLERANCE:g}); torch {torch.__version__}, transformers {transformers.__version__}")
    if not diff <= TOLERANCE:
        where = np.unravel_index(np.abs(logits - expected).argmax(), logits.shape)
        print(f"FAIL: logits differ, worst at {tuple(int(i) for i in where)}")
        return 1

    # 2. Half-precision files against torch's rounding of the f32 tensors.
    reference = load_file(os.path.join(work, "f32", "model.safetensors"))
    for name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        tensors = load_file(os.path.join(work, name, "model.safetensors"))
        if tensors.keys() != reference.keys():
            print(f"FAIL: {name} file holds other tensors than the f32 one")
            return 1
        for key, ref in reference.items():
            got = tensors[key]
            if got.dtype != dtype or got.shape != ref.shape or not torch.equal(
                    got.view(torch.int16), ref.to(dtype).view(torch.int16)):
                print(f"FAIL: {name} tensor {key} differs from torch's rounding of the f32 values")
                return 1
        print(f"{name}: {len(tensors)} tensors equal torch's round-to-nearest-even conversion bit for bit")
    # 3. tessera reads what transformers writes.
    hf_dir = os.path.join(work, "hf_saved")
    model.save_pretrained(hf_dir, safe_serialization=True)
    reloaded = os.path.join(work, "params_from_hf.f32")
    subprocess.run([exe, "--load", hf_dir, reloaded], check=True)
    original = np.fromfile(os.path.join(work, "params.f32"), dtype=np.float32)
    back = np.fromfile(reloaded, dtype=np.float32)
    if original.shape != back.shape or not np.array_equal(original.view(np.uint32), back.view(np.uint32)):
        print("FAIL: tessera did not read transformers' save_pretrained output back bit for bit")
        return 1
    print(f"save_pretrained -> tessera: {original.size} parameters identical")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
