// Training setup for the benchmarks: a config timing one micro-batch per step, and random
// tokens (speed does not depend on the text) in a folder of the system's temp directory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "models/gpt_config.h"
#include "runtime/core/rng.h"
#include "runtime/engine/config.h"
#include "runtime/engine/token_data.h"

namespace tessera::bench {

// `preset` at micro-batch B x T, one micro-batch per step, gradient clipping on as in real
// runs; block_size grows to T when T is longer.
inline engine::TrainConfig step_config(const std::string& preset, int batch, int seq) {
  engine::TrainConfig cfg;
  cfg.model = models::gpt_preset(preset);
  cfg.model.block_size = std::max(cfg.model.block_size, seq);
  cfg.micro_batch_size = batch;
  cfg.gradient_accumulation_steps = 1;
  cfg.seq_len = seq;
  cfg.gradient_clipping = 1.0;
  return cfg;
}

// Writes `count` random tokens below cfg.model.vocab_size to <tmp>/<folder>/tokens.bin and
// sets cfg.train_files and cfg.output_dir (<tmp>/<folder>/run).
inline void use_random_tokens(engine::TrainConfig& cfg, const std::string& folder,
                              size_t count) {
  const auto dir = std::filesystem::temp_directory_path() / folder;
  std::filesystem::create_directories(dir);
  Rng rng(1);
  std::vector<uint16_t> tokens(count);
  for (auto& t : tokens) t = static_cast<uint16_t>(rng.below(cfg.model.vocab_size));
  const std::string data = (dir / "tokens.bin").string();
  engine::write_token_file(data, tokens);
  cfg.train_files = {data};
  cfg.output_dir = (dir / "run").string();
}

}  // namespace tessera::bench
