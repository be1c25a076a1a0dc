#!/usr/bin/env python3
"""The same GPT-2 training step in PyTorch, for a side-by-side ratio with bench_train.

Same architecture (pre-LN, fused QKV, GELU-tanh, tied head), AdamW, clipping at 1.0,
random tokens. Each thread count runs in its own process with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set, so "1 thread" really is one core. Prints the same table as bench/bench_train.cc. Uses Debian's python3-torch:
  /usr/bin/python3 bench/pytorch_gpt2.py --model gpt2-124M --batch 4 --seq 256 --threads 1,2
"""
import argparse
import math
import os
import subprocess
import sys
import time

# torch.set_num_threads does not reach the BLAS Debian's torch links (OpenBLAS, pthreads),
# which would use every core: each thread count runs in a child process with the BLAS and
# OpenMP thread counts set before torch loads.
if __name__ == "__main__" and "--child" not in sys.argv:
    args = sys.argv[1:]
    threads = "1,2"
    if "--threads" in args:
        threads = args[args.index("--threads") + 1]
    for i, t in enumerate(threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
        child = [a for a in args]
        if "--threads" in child:
            child[child.index("--threads") + 1] = t
        else:
            child += ["--threads", t]
        child += ["--child"] + (["--no-header"] if i > 0 else [])
        subprocess.run([sys.executable, __file__] + child, env=env, check=True)
    sys.exit(0)

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "nano": (2, 2, 32, 256, 32),
    "tiny": (4, 4, 256, 50304, 256),
    "gpt2-124M": (12, 12, 768, 50304, 1024),
    "gpt2-350M": (24, 16, 1024, 50304, 1024),
}


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True) \
            if hasattr(F, "scaled_dot_product_attention") else self._attn(q, k, v)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    @staticmethod
    def _attn(q, k, v):
        T = q.size(-2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        return att @ v


class GPT(nn.Module):
    def __init__(self, L, H, C, V, block):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(block, C)
        self.h = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124M")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--no-header", action="store_true")
    a = ap.parse_args()
    L, H, C, V, block = PRESETS[a.model]
    n_params = V * C + L * (12 * C * C + 13 * C) + 2 * C  # without wpe
    fpt = 6 * n_params + 12 * L * C * a.seq
    if not a.no_header:
        print(f"pytorch {torch.__version__} model {a.model}: B={a.batch} T={a.seq}, "
              f"{fpt / 1e9:.3f} GFLOP/token")
        print("| threads | ms/step | tokens/s | GFLOP/s |")
        print("|---|---|---|---|", flush=True)
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = GPT(L, H, C, V, max(block, a.seq))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        idx = torch.randint(0, V, (a.batch, a.seq))
        tgt = torch.randint(0, V, (a.batch, a.seq))
        times = []
        for i in range(a.warmup + a.steps):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = model(idx, tgt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
        ms = 1000 * sum(times) / len(times)
        tok_s = a.batch * a.seq / (ms / 1000)
        print(f"| {threads} | {ms:.1f} | {tok_s:.0f} | {tok_s * fpt / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
