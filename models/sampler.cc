#include "models/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace tessera::models {

int32_t sample_from_logits(float* logits, int V, const SampleOptions& opts, double uniform01) {
  if (opts.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  }
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  int keep = V;
  if (opts.top_k > 0 && opts.top_k < V) {
    keep = opts.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }
  float mx = -INFINITY;
  for (int i = 0; i < keep; ++i) mx = std::max(mx, logits[order[i]]);
  double sum = 0.0;
  std::vector<double> p(keep);
  for (int i = 0; i < keep; ++i) {
    p[i] = std::exp((logits[order[i]] - mx) / opts.temperature);
    sum += p[i];
  }
  double target = uniform01 * sum;
  for (int i = 0; i < keep; ++i) {
    target -= p[i];
    if (target <= 0.0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> sample_tokens(const GPTConfig& config, ParamAccess& params,
                                   const std::vector<int32_t>& prompt, const SampleOptions& opts) {
  TS_CHECK(!prompt.empty(), "sampling needs a prompt of at least one token");
  for (int32_t t : prompt) {
    TS_CHECK(t >= 0 && t < config.vocab_size, "prompt token {} is outside the vocabulary of {}",
             t, config.vocab_size);
  }
  GPT<float> model(config);
  std::vector<int32_t> out;
  std::vector<float> logits(config.vocab_size);
  Rng rng(opts.seed);
  // The context keeps the last block_size tokens; when it slides, the cache is rebuilt
  // from the window (positions are absolute in GPT-2, so cached keys cannot shift).
  std::vector<int32_t> context = prompt;
  if (static_cast<int>(context.size()) > config.block_size) {
    context.erase(context.begin(), context.end() - config.block_size);
  }
  auto cache = model.make_kv_cache();
  for (int32_t t : context) model.decode_step(params, cache, t, logits.data());
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    const int32_t next = sample_from_logits(logits.data(), config.vocab_size, opts, rng.uniform());
    out.push_back(next);
    if (i + 1 == opts.max_new_tokens) break;
    context.push_back(next);
    if (cache.length == config.block_size) {
      context.erase(context.begin(), context.end() - (config.block_size / 2));
      cache = model.make_kv_cache();
      for (size_t j = 0; j + 1 < context.size(); ++j) {
        model.decode_step(params, cache, context[j], logits.data());
      }
    }
    model.decode_step(params, cache, next, logits.data());
  }
  return out;
}

}  // namespace tessera::models
