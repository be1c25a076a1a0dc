// `tessera generate`: sample from saved weights (model.safetensors + config.json beside it)
// with the byte-level tokenizer.
#include <filesystem>
#include <iostream>

#include "launch/byte_tokenizer.h"
#include "launch/commands.h"
#include "launch/printable.h"
#include "models/sampler.h"
#include "models/weights_io.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace tessera::launch {

int run_generate(const GenerateOptions& opts) {
  namespace fs = std::filesystem;
  const fs::path config_path = fs::path(opts.weights).parent_path() / "config.json";
  TS_CHECK(fs::exists(opts.weights), "weights file '{}' does not exist: train with `tessera train` "
           "(it writes <output.dir>/model.safetensors) or check the path", opts.weights);
  TS_CHECK(fs::exists(config_path), "no config.json beside '{}': the model's shape is read from "
           "{}", opts.weights, config_path.string());
  TS_CHECK(opts.max_new_tokens >= 0, "--max-new-tokens must be >= 0");
  TS_CHECK(opts.temperature >= 0, "--temperature must be >= 0 (0 = greedy)");
  TS_CHECK(opts.top_k >= 0, "--top-k must be >= 0 (0 = no cut)");
  const models::GPTConfig config = models::read_hf_config(config_path.string());
  TS_CHECK(config.vocab_size >= kByteVocab, "the model's vocab_size {} is smaller than the byte "
           "tokenizer's {}", config.vocab_size, kByteVocab);
  const ParamRegistry registry = models::build_gpt_registry(config);
  Storage params(static_cast<size_t>(registry.numel()) * sizeof(float), MemCategory::Params);
  models::load_gpt_safetensors(opts.weights, config, registry, static_cast<float*>(params.data()));
  LocalParamAccess access(registry, params.data(), nullptr, sizeof(float));
  models::SampleOptions so;
  so.max_new_tokens = opts.max_new_tokens;
  so.temperature = opts.temperature;
  so.top_k = opts.top_k;
  so.seed = opts.seed;
  const std::string prompt = opts.prompt.empty() ? "\n" : opts.prompt;
  const std::vector<int32_t> out = models::sample_tokens(config, access, encode_bytes(prompt), so);
  const std::string text = prompt + decode_bytes(out);
  std::cout << (opts.raw ? text : printable_text(text)) << std::endl;
  return 0;
}

}  // namespace tessera::launch
