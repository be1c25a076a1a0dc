// Training data for the benchmarks: random tokens (speed does not depend on the text) in a
// folder of the system's temp directory, with the config pointed at them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/core/rng.h"
#include "runtime/engine/config.h"
#include "runtime/engine/token_data.h"

namespace tessera::bench {

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
