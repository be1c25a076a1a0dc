// GPT-2 weights in Hugging Face's safetensors layout: save, load, and config.json.
//
// Names are HF GPT-2's ("wte.weight", "h.3.attn.c_attn.weight", ...), which the registry
// already uses. HF implements attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj as Conv1D,
// whose weight is stored [in, out]; tessera stores every weight [out, in], so those four are
// transposed on save and on load. c_attn packs Q, K, V along `out`, the same row order as
// tessera's fused qkv weight, so the transposition is the whole mapping. Everything else
// (embeddings, LayerNorms, biases) is stored as is.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "models/gpt_config.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"

namespace tessera::models {

// Writes every parameter of `flat` (registry.numel() floats, laid out by `registry`, built
// from `config`) to `path` as f32, f16 or bf16 (rounded to nearest even), plus an
// HF-compatible config.json in the same directory, so that
// transformers.GPT2LMHeadModel.from_pretrained(dir) loads it when `path` is
// dir/model.safetensors. The lm_head is not written: GPT-2 ties it to wte.
void save_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, const float* flat,
                          DType dtype = DType::F32);
// The same file from a reader of the flat model's fp32 values ([begin, end) into out), asked
// one tensor at a time: a model that is not in memory whole (its states on disk) is written
// through one tensor's buffer.
using FlatReader = std::function<void(int64_t begin, int64_t end, float* out)>;
void save_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, const FlatReader& read,
                          DType dtype = DType::F32);

// Reads a GPT-2 safetensors file into `flat` (registry.numel() floats), converting f16 and
// bf16 to f32. Accepts HF's optional "transformer." name prefix; ignores the causal-mask
// buffers h.N.attn.bias and h.N.attn.masked_bias. An lm_head.weight is accepted only if it
// is bit-identical to wte.weight (a tied head saved twice); a different one is an error,
// because tessera always ties the head and would silently compute different logits.
// Every parameter must be present with its exact shape, and any other tensor is an error:
// messages name the tensor, both shapes and, where the file's shapes reveal it, the
// checkpoint's own dimensions (e.g. "the file looks like gpt2-350M ...").
void load_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, float* flat);
// Elements [begin, end) of what load_gpt_safetensors writes, into out[0, end - begin),
// bit for bit. The whole header is checked as above (a bad file gives every caller the same
// error, whatever its slice), but only the slice's tensor bytes are read from the mapping, so
// a ZeRO rank loads its shard without the whole model in memory (Conv1D weights are read
// row-run by row-run, with at most two extra tessera rows of scratch). The tied-head check
// covers the slice's part of wte.
void load_gpt_safetensors_range(const std::string& path, const GPTConfig& config,
                                const ParamRegistry& registry, int64_t begin, int64_t end,
                                float* out);

// Parses a Hugging Face GPT-2 config.json (n_positions becomes block_size). Settings that
// would change the model's arithmetic away from what tessera computes (another activation,
// a LayerNorm epsilon other than 1e-5, an untied head, n_inner != 4 n_embd, ...) are errors.
GPTConfig read_hf_config(const std::string& config_json_path);

}  // namespace tessera::models
