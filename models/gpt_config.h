// GPT-2 model shapes and the named presets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::models {

struct GPTConfig {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int vocab_size = 0;
  int block_size = 0;  // maximum sequence length (rows of the position embedding)

  // Throws InvalidArgument naming the bad field (e.g. n_embd not divisible by n_head).
  void validate() const;
  // Parameters, position embedding included.
  int64_t num_params() const;
  // Training FLOPs per token: 6 N + 12 L C T, N excluding the position embedding (the
  // formula of PaLM's appendix B / llm.c; the attention term counts the full T x T scores).
  double flops_per_token(int seq_len) const;
};

// "nano", "tiny", "gpt2-124M", "gpt2-350M", "gpt2-774M", "gpt2-1.5B".
GPTConfig gpt_preset(const std::string& name);
std::vector<std::string> gpt_preset_names();

}  // namespace tessera::models
