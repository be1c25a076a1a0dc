#include "models/gpt_config.h"

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::models {

void GPTConfig::validate() const {
  TS_CHECK(n_layer >= 1, "model.n_layer = {}: must be at least 1", n_layer);
  TS_CHECK(n_head >= 1, "model.n_head = {}: must be at least 1", n_head);
  TS_CHECK(n_embd >= 1 && n_embd % n_head == 0,
           "model.n_embd = {} must be a positive multiple of model.n_head = {}", n_embd, n_head);
  TS_CHECK(vocab_size >= 1, "model.vocab_size = {}: must be at least 1", vocab_size);
  TS_CHECK(block_size >= 1, "model.block_size = {}: must be at least 1", block_size);
}

int64_t GPTConfig::num_params() const {
  const int64_t C = n_embd, L = n_layer;
  const int64_t per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C +
                            (4 * C * C + 4 * C) + (4 * C * C + C);
  return int64_t{vocab_size} * C + int64_t{block_size} * C + L * per_block + 2 * C;
}

double GPTConfig::flops_per_token(int seq_len) const {
  const double n = static_cast<double>(num_params() - int64_t{block_size} * n_embd);
  return 6.0 * n + 12.0 * n_layer * n_embd * static_cast<double>(seq_len);
}

GPTConfig gpt_preset(const std::string& name) {
  // vocab 50304: GPT-2's 50257 padded to a multiple of 128, as llm.c and nanoGPT do.
  if (name == "nano") return {2, 2, 32, 256, 32};
  if (name == "tiny") return {4, 4, 256, 50304, 256};
  if (name == "gpt2-124M") return {12, 12, 768, 50304, 1024};
  if (name == "gpt2-350M") return {24, 16, 1024, 50304, 1024};
  if (name == "gpt2-774M") return {36, 20, 1280, 50304, 1024};
  if (name == "gpt2-1.5B") return {48, 25, 1600, 50304, 1024};
  TS_THROW(InvalidArgument, "unknown model preset '{}': use one of {}", name,
           fmt::join(gpt_preset_names(), ", "));
}

std::vector<std::string> gpt_preset_names() {
  return {"nano", "tiny", "gpt2-124M", "gpt2-350M", "gpt2-774M", "gpt2-1.5B"};
}

}  // namespace tessera::models
