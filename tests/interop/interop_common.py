"""What the interop scripts share: their command line, the skip protocol (ctest's
SKIP_RETURN_CODE 77 when the Python packages are absent) and running the C++ helper."""
import os
import shutil
import subprocess
import sys

SKIP = 77


def parse_args(doc):
    """(helper executable, work folder) from `script.py HELPER WORK_DIR`, or exits 2."""
    if len(sys.argv) != 3:
        print(doc, file=sys.stderr)
        sys.exit(2)
    return sys.argv[1], sys.argv[2]


def skipped(what, error, install):
    """Reports the skip and returns the code ctest reads as 'skipped'."""
    print(f"skipped: {what} not importable ({error}); pip install {install} to run this test")
    return SKIP


def run_helper(exe, work, capture=False):
    """Runs the C++ helper in a fresh work folder; returns its stdout when captured."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    result = subprocess.run([exe, work], check=True, capture_output=capture, text=True)
    return result.stdout if capture else None


def load_gpt2(transformers, torch, folder):
    """GPT2LMHeadModel.from_pretrained(folder) in f32, and what it did not load as is (missing,
    unexpected or resized weights, errors): empty when every weight loaded. Causal-mask
    buffers are not weights, and lm_head is tied to wte."""
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        folder, output_loading_info=True, torch_dtype=torch.float32)
    ignorable = ("attn.bias", "attn.masked_bias", "lm_head.weight")
    problems = {
        kind: [k for k in info.get(kind, []) if not (isinstance(k, str) and k.endswith(ignorable))]
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    return model, {kind: keys for kind, keys in problems.items() if keys}


def read_logits(np, folder):
    """(tokens [B, T], logits [B, T, V]) that interop_dump_logits wrote into folder."""
    with open(os.path.join(folder, "shape.txt")) as f:
        B, T, V = (int(x) for x in f.read().split())
    tokens = np.fromfile(os.path.join(folder, "tokens.i32"), dtype=np.int32).reshape(B, T)
    logits = np.fromfile(os.path.join(folder, "logits.f32"), dtype=np.float32).reshape(B, T, V)
    return tokens, logits
