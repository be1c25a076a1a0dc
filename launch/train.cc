// `tessera train`: load the config, train, save, and print a sample when asked.
#include <iostream>

#include "launch/byte_tokenizer.h"
#include "launch/commands.h"
#include "models/sampler.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"

namespace tessera::launch {

int run_train(const TrainOptions& opts) {
  engine::TrainConfig config = engine::load_train_config(opts.config_path, opts.overrides);
  engine::Trainer trainer(std::move(config));
  trainer.run();
  const engine::TrainConfig& c = trainer.config();
  if (c.sample_tokens > 0) {
    models::SampleOptions so;
    so.max_new_tokens = c.sample_tokens;
    so.temperature = 1.0f;
    so.top_k = 0;
    so.seed = c.seed;
    const std::vector<int32_t> prompt = encode_bytes(c.sample_prompt);
    const std::vector<int32_t> out = models::sample_tokens(c.model, trainer.params(), prompt, so);
    log_rank0("sample ({} tokens, temperature {}):", out.size(), so.temperature);
    std::cout << c.sample_prompt << decode_bytes(out) << std::endl;
  }
  return 0;
}

}  // namespace tessera::launch
