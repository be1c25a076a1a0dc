#!/usr/bin/env python3
"""Writes the hand-made seed corpus under tests/fuzz/seeds/ (checked in; rerun after changing
a format). Seeds are small valid inputs plus a few near misses, so the fuzzer starts inside
each parser's grammar instead of spending its time discovering braces and magic numbers."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(harness, name, data):
    path = os.path.join(HERE, "seeds", harness, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# --- config: JSON text, then optionally NUL and newline-separated --set overrides ----------
with open(os.path.join(HERE, "..", "..", "configs", "gpt2-124M.json")) as f:
    write("config", "gpt2_124m.json", f.read())
demo = {
    "train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0, "steps_per_print": 20,
    "optimizer": {"type": "AdamW",
                  "params": {"lr": 2e-3, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupCosineLR",
                  "params": {"warmup_num_steps": 30, "warmup_type": "linear", "cos_min_ratio": 0.1}},
    "model": {"preset": "tiny", "vocab_size": 256, "block_size": 128},
    "data": {"train": "data/tinyshakespeare_train.bin", "val": "data/tinyshakespeare_val.bin",
             "seq_len": 128},
    "training": {"steps": 400, "seed": 1337, "eval_interval": 100, "eval_iters": 10,
                 "sample_tokens": 300, "sample_prompt": "ROMEO:\n"},
    "output": {"dir": "runs/demo"},
}
write("config", "demo.json", json.dumps(demo, indent=2))
every_block = {
    "train_batch_size": 24, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5, "steps_per_print": 1,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.8, 0.9], "eps": 1e-6,
                                             "weight_decay": 0.0}},
    "scheduler": {"type": "WarmupDecayLR",
                  "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 10,
                             "warmup_type": "log", "total_num_steps": 100}},
    "fp16": {"enabled": True, "auto_cast": False, "loss_scale": 0, "initial_scale_power": 16,
             "loss_scale_window": 1000, "hysteresis": 2, "consecutive_hysteresis": False,
             "min_loss_scale": 1},
    "bf16": {"enabled": False},
    "zero_optimization": {
        "stage": 3, "reduce_bucket_size": 5e8, "overlap_comm": True, "contiguous_gradients": True,
        "allgather_bucket_size": 5e8, "reduce_scatter": True, "allgather_partitions": True,
        "stage3_prefetch_bucket_size": 50000000, "stage3_param_persistence_threshold": 100000,
        "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
        "sub_group_size": 1e9, "offload_optimizer": {"device": "none"}, "offload_param": None},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 256, "block_size": 32,
              "init_from": "runs/x/model.safetensors"},
    "data": {"train": ["a.bin", "b.bin"], "val": "v.bin", "seq_len": 16, "shuffle": True,
             "format": "nanogpt"},
    "training": {"steps": 5, "seed": 7, "threads": 1, "eval_interval": 2, "eval_iters": 1,
                 "sample_tokens": 0, "sample_prompt": "\n"},
    "output": {"dir": "runs/fuzz"},
}
write("config", "every_block.json", json.dumps(every_block))
write("config", "every_block_bfloat16.json",
      json.dumps({**every_block, "fp16": {"enabled": False}, "bfloat16": {"enabled": True}}))
write("config", "demo_with_overrides.bin",
      json.dumps(demo) + "\0" + "\n".join([
          "training.steps=7", "data.train=other.bin", "model.n_layer=3",
          "optimizer.params.betas=[0.8,0.9]", "zero_optimization.stage=2",
          "zero_optimization.reduce_bucket_size=2.5e7", "data.format=\"llmc\"", "fp16.enabled=true"]))
write("config", "overrides_build_config.bin",
      "{}\0model.preset=nano\ndata.train=x.bin\ntrain_micro_batch_size_per_gpu=2\n"
      "train_batch_size=8\nbf16.enabled=true")
write("config", "unknown_key.json", json.dumps({**demo, "trainig": {"steps": 1}}))

# --- safetensors: 8-byte little-endian header length, JSON header, data section -----------
def safetensors(tensors, metadata=None, pad=True):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 65504)
f16 = struct.pack("<4H", 0x3C00, 0xC000, 0x7BFF, 0x0001)  # 1, -2, max, smallest subnormal
bf16 = struct.pack("<4H", 0x3F80, 0xC000, 0x7F7F, 0x7FC0)  # 1, -2, max, nan
write("safetensors", "three_dtypes.safetensors", safetensors(
    [("wte.weight", "F32", [2, 3], f32), ("h.0.ln_1.weight", "F16", [4], f16),
     ("h.0.ln_1.bias", "BF16", [2, 2], bf16)], {"format": "pt", "tessera": "0.1.0"}))
write("safetensors", "empty_and_scalar.safetensors", safetensors(
    [("empty", "F32", [0, 5], b""), ("scalar", "F32", [], struct.pack("<f", 2.0))]))
write("safetensors", "no_tensors.safetensors", safetensors([], {}))
write("safetensors", "unpadded.safetensors",
      safetensors([("x", "F16", [1, 2], f16[:4])], pad=False))
write("safetensors", "int_dtype_refused.safetensors",
      safetensors([("ids", "I64", [1], struct.pack("<q", 5))]))

# --- token_file: byte 0 format (bit 0: 1 nanogpt), bytes 1-4 vocab_size (int32 LE), file ----
def llmc(tokens, count=None):
    header = [20240520, 1, len(tokens) if count is None else count] + [0] * 253
    return struct.pack("<256i", *header) + struct.pack(f"<{len(tokens)}H", *tokens)


tokens = [5, 0, 255, 17, 42, 3, 3, 3, 200, 1, 2, 254]
write("token_file", "llmc_vocab256.bin", b"\0" + struct.pack("<i", 256) + llmc(tokens))
write("token_file", "llmc_empty.bin", b"\0" + struct.pack("<i", 50304) + llmc([]))
write("token_file", "llmc_token_too_big.bin", b"\0" + struct.pack("<i", 255) + llmc(tokens))
write("token_file", "nanogpt_vocab50304.bin",
      b"\1" + struct.pack("<i", 50304) + struct.pack("<8H", 50256, 0, 1, 2, 464, 3290, 50303, 9))
write("token_file", "nanogpt_odd_size.bin", b"\1" + struct.pack("<i", 50304) + b"\1\0\2")

# --- hostfile: NUL-separated hostfile text, --include, --exclude, -n (first byte) ----------
hostfile = "# cluster\nworker-1 slots=4\n\n  worker-2 slots=2   # fast one\nworker-3\n"
write("hostfile", "include_slots.bin", hostfile + "\0worker-1:0,1@worker-3\0\0\x06")
write("hostfile", "exclude_host.bin", hostfile + "\0\0worker-2@worker-1:3\0\x02")
write("hostfile", "oversubscribe.bin", "a slots=1\nb slots=1\n\0\0\0\x10")
write("hostfile", "hostfile_only.txt", hostfile)
write("hostfile", "duplicate_host.bin", "a slots=2\nb\na slots=1\n\0a\0\0\x01")
