// Autoregressive sampling from a GPT: temperature, top-k, a seeded generator.
#pragma once

#include <cstdint>
#include <vector>

#include "models/gpt.h"

namespace tessera::models {

struct SampleOptions {
  int max_new_tokens = 200;
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0: the whole vocabulary
  uint64_t seed = 1337;
};

// Continues `prompt` (token ids, at least one) by max_new_tokens tokens; returns only the
// new ones. Decodes one token at a time against a KV cache; when the context reaches
// block_size it keeps the most recent half and rebuilds the cache from it.
std::vector<int32_t> sample_tokens(const GPTConfig& config, ParamAccess& params,
                                   const std::vector<int32_t>& prompt, const SampleOptions& opts);

// One draw from logits [V] (modified in place) with the options' temperature and top-k.
int32_t sample_from_logits(float* logits, int V, const SampleOptions& opts, double uniform01);

}  // namespace tessera::models
