// Whole-model checks of the GPT: gradients against central finite differences in double,
// float against double, GPT-2 initial loss, accumulation, and the registry's layout.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "models/gpt.h"
#include "models/sampler.h"
#include "runtime/core/rng.h"
#include "tests/models/model_test_util.h"

namespace tessera::models {
namespace {

// Small enough that every parameter can be perturbed, big enough to have two blocks,
// several heads and a sequence longer than one position.
GPTConfig check_config() { return {2, 2, 8, 11, 6}; }

using test_util::random_tokens;

template <typename T>
struct ModelUnderTest {
  explicit ModelUnderTest(const GPTConfig& cfg, int B, int T_, uint64_t seed = 7)
      : model(cfg),
        params(model.registry().numel()),
        grads(model.registry().numel()),
        access(model.registry(), params.data(), grads.data(), sizeof(T)) {
    init_params(model.registry(), params.data(), seed);
    model.allocate_activations(B, T_);
  }
  GPT<T> model;
  std::vector<T> params, grads;
  LocalParamAccess access;
};

TEST(GptGradCheck, EveryParameterMatchesFiniteDifferencesInDouble) {
  const GPTConfig cfg = check_config();
  const int B = 2, T = 5;
  ModelUnderTest<double> m(cfg, B, T);
  // Larger-than-init weights make every path (attention softmax, GELU curvature) matter.
  Rng rng(99);
  for (double& p : m.params) p += 0.3 * (rng.uniform() - 0.5);
  const auto in = random_tokens(B * T, cfg.vocab_size, 1);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 2);
  m.model.forward_backward(m.access, in.data(), tg.data(), B, T, 1.0);
  const double h = 1e-6;
  double max_err = 0.0, max_grad = 0.0;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const double saved = m.params[i];
    m.params[i] = saved + h;
    const double up = m.model.forward(m.access, in.data(), tg.data(), B, T);
    m.params[i] = saved - h;
    const double down = m.model.forward(m.access, in.data(), tg.data(), B, T);
    m.params[i] = saved;
    const double numeric = (up - down) / (2 * h);
    max_err = std::max(max_err, std::abs(numeric - m.grads[i]));
    max_grad = std::max(max_grad, std::abs(numeric));
  }
  // Central differences in double: truncation ~h^2, rounding ~1e-16/h = 1e-10.
  EXPECT_LT(max_err / std::max(1.0, max_grad), 1e-7) << "max abs error " << max_err;
  EXPECT_GT(max_grad, 1e-3);  // the check saw real gradients
}

TEST(GptGradCheck, GradScaleAndAccumulation) {
  const GPTConfig cfg = check_config();
  const int B = 2, T = 6;
  ModelUnderTest<double> once(cfg, B, T), twice(cfg, B, T);
  const auto in = random_tokens(B * T, cfg.vocab_size, 3);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 4);
  const double l1 = once.model.forward_backward(once.access, in.data(), tg.data(), B, T, 1.0);
  const double l2a = twice.model.forward_backward(twice.access, in.data(), tg.data(), B, T, 0.5);
  const double l2b = twice.model.forward_backward(twice.access, in.data(), tg.data(), B, T, 0.5);
  EXPECT_DOUBLE_EQ(l1, l2a);
  EXPECT_DOUBLE_EQ(l1, l2b);
  for (size_t i = 0; i < once.grads.size(); ++i) {
    ASSERT_NEAR(once.grads[i], twice.grads[i], 1e-12 * (1 + std::abs(once.grads[i]))) << i;
  }
}

TEST(GptForward, FloatMatchesDouble) {
  const GPTConfig cfg{2, 4, 64, 97, 32};
  const int B = 3, T = 32;
  ModelUnderTest<double> d(cfg, B, T);
  ModelUnderTest<float> f(cfg, B, T);
  const auto in = random_tokens(B * T, cfg.vocab_size, 5);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 6);
  const double ld = d.model.forward_backward(d.access, in.data(), tg.data(), B, T, 1.0);
  const double lf = f.model.forward_backward(f.access, in.data(), tg.data(), B, T, 1.0);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  double max_err = 0, max_g = 0;
  for (size_t i = 0; i < d.grads.size(); ++i) {
    max_err = std::max(max_err, std::abs(d.grads[i] - f.grads[i]));
    max_g = std::max(max_g, std::abs(d.grads[i]));
  }
  EXPECT_LT(max_err / max_g, 1e-4);
}

TEST(GptForward, InitialLossIsLogVocab) {
  // GPT-2 init (std 0.02) gives nearly uniform predictions: loss ~ ln(V).
  const GPTConfig cfg = gpt_preset("nano");
  const int B = 4, T = cfg.block_size;
  ModelUnderTest<float> m(cfg, B, T, 1337);
  const auto in = random_tokens(B * T, cfg.vocab_size, 7);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 8);
  EXPECT_NEAR(m.model.forward(m.access, in.data(), tg.data(), B, T), std::log(256.0), 0.05);
}

TEST(GptForward, SmallerBatchReusesTheArena) {
  const GPTConfig cfg = check_config();
  ModelUnderTest<double> big(cfg, 3, 6), exact(cfg, 1, 4);
  const auto in = random_tokens(4, cfg.vocab_size, 9);
  const auto tg = random_tokens(4, cfg.vocab_size, 10);
  EXPECT_DOUBLE_EQ(big.model.forward(big.access, in.data(), tg.data(), 1, 4),
                   exact.model.forward(exact.access, in.data(), tg.data(), 1, 4));
  EXPECT_THROW(exact.model.forward(exact.access, in.data(), tg.data(), 2, 4), InvalidArgument);
}

TEST(GptRegistry, LayoutNamesAndInit) {
  const GPTConfig cfg = gpt_preset("gpt2-124M");
  const ParamRegistry reg = build_gpt_registry(cfg);
  EXPECT_EQ(reg.numel(), cfg.num_params());
  EXPECT_EQ(reg.numel(), 124475904);  // GPT-2 124M with vocab padded to 50304
  // The embeddings, four layers per block (one GEMM's weights each), ln_f.
  EXPECT_EQ(reg.num_layers(), 1 + 4 * cfg.n_layer + 1);
  const ParamSpec& proj = reg.find("h.11.mlp.c_proj.weight");
  EXPECT_EQ(proj.layer, 1 + 4 * 11 + 3);
  EXPECT_EQ(reg.layer(proj.layer).numel(), 768 * 3072 + 768);
  EXPECT_EQ(reg.find("h.11.mlp.c_fc.weight").layer, 1 + 4 * 11 + 2);
  EXPECT_EQ(reg.find("h.11.ln_2.weight").layer, 1 + 4 * 11 + 2);
  EXPECT_EQ(proj.shape, (Shape{768, 3072}));
  EXPECT_FLOAT_EQ(proj.init_std, static_cast<float>(0.02 / std::sqrt(24.0)));
  EXPECT_EQ(reg.find("h.0.attn.c_attn.weight").init_std, 0.02f);
  EXPECT_EQ(reg.find("ln_f.bias").init, ParamInit::Zeros);
  // Layers tile the flat buffer with no gaps.
  int64_t expect_begin = 0;
  for (int l = 0; l < reg.num_layers(); ++l) {
    EXPECT_EQ(reg.layer(l).begin, expect_begin);
    expect_begin = reg.layer(l).end;
  }
  EXPECT_EQ(expect_begin, reg.numel());
}

TEST(GptRegistry, ChunkedWordEmbeddingSplitsWteByRowsAndReportsItTwice) {
  const GPTConfig cfg = gpt_preset("gpt2-124M");
  const int chunks = zero3_wte_chunks(cfg);
  EXPECT_EQ(chunks, 17);  // 50304 rows of 768 in chunks of about one c_fc (4 x 768^2)
  const ParamRegistry reg = build_gpt_registry(cfg, chunks);
  const GptLayers layers(cfg, chunks);
  EXPECT_EQ(reg.numel(), cfg.num_params());
  EXPECT_EQ(reg.num_layers(), chunks + 1 + 4 * cfg.n_layer + 1);
  int64_t rows = 0;
  for (int k = 0; k < chunks; ++k) {
    EXPECT_EQ(reg.layer(layers.wte_layer(k)).begin, layers.chunk_begin(k) * cfg.n_embd);
    EXPECT_EQ(reg.layer(layers.wte_layer(k)).numel(), layers.chunk_rows(k) * cfg.n_embd);
    EXPECT_EQ(reg.layer(layers.wte_layer(k)).grad_reports, 2);
    rows += layers.chunk_rows(k);
  }
  EXPECT_EQ(rows, cfg.vocab_size);
  EXPECT_EQ(reg.find("wpe.weight").layer, layers.wpe_layer());
  EXPECT_EQ(reg.layer(layers.wpe_layer()).grad_reports, 1);
  EXPECT_EQ(reg.find("h.0.ln_1.weight").layer, chunks + 1);
  EXPECT_EQ(reg.find("ln_f.bias").layer, reg.num_layers() - 1);
  // The small presets keep one embedding layer (chunking would only add passes).
  EXPECT_EQ(zero3_wte_chunks(gpt_preset("nano")), 1);
  // Rows that do not divide evenly: 10 rows asked in 6 chunks give 5 of 2.
  GPTConfig ten = gpt_preset("nano");
  ten.vocab_size = 10;
  EXPECT_EQ(GptLayers(ten, 6).wte_chunks, 5);
  EXPECT_EQ(GptLayers(ten, 4).chunk_rows(3), 1);
}

TEST(GptConfigTest, PresetsAndValidation) {
  EXPECT_EQ(gpt_preset("gpt2-1.5B").n_embd, 1600);
  EXPECT_THROW(gpt_preset("gpt5"), InvalidArgument);
  GPTConfig bad{2, 3, 32, 256, 32};
  EXPECT_THROW(bad.validate(), InvalidArgument);  // 32 % 3 != 0
}

TEST(GptKvCache, DecodeStepsEqualTheFullForward) {
  const GPTConfig cfg{2, 4, 32, 50, 16};
  ModelUnderTest<float> m(cfg, 1, cfg.block_size, 21);
  Rng rng(4);
  for (float& p : m.params) p += 0.05f * static_cast<float>(rng.uniform() - 0.5);
  const auto tokens = random_tokens(cfg.block_size, cfg.vocab_size, 12);
  m.model.forward(m.access, tokens.data(), nullptr, 1, cfg.block_size);
  auto cache = m.model.make_kv_cache();
  std::vector<float> full(cfg.vocab_size), step(cfg.vocab_size);
  for (int t = 0; t < cfg.block_size; ++t) {
    m.model.decode_step(m.access, cache, tokens[t], step.data());
    m.model.logits_at(m.access, 0, t, full.data());
    for (int v = 0; v < cfg.vocab_size; ++v) {
      ASSERT_NEAR(step[v], full[v], 1e-4f * (1.0f + std::abs(full[v]))) << "t " << t << " v " << v;
    }
  }
  EXPECT_THROW(m.model.decode_step(m.access, cache, 0, step.data()), InvalidArgument);  // full
}

TEST(Sampler, DeterministicForASeedAndGreedyIsArgmax) {
  const GPTConfig cfg = gpt_preset("nano");
  ModelUnderTest<float> m(cfg, 1, cfg.block_size, 3);
  SampleOptions o;
  o.max_new_tokens = 40;  // longer than block_size: the context window slides
  o.seed = 5;
  const std::vector<int32_t> prompt{1, 2, 3};
  const auto a = sample_tokens(cfg, m.access, prompt, o);
  const auto b = sample_tokens(cfg, m.access, prompt, o);
  EXPECT_EQ(a, b);
  o.seed = 6;
  EXPECT_NE(a, sample_tokens(cfg, m.access, prompt, o));
  std::vector<float> logits{0.1f, 3.0f, -1.0f, 2.9f};
  SampleOptions greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(sample_from_logits(logits.data(), 4, greedy, 0.99), 1);
  SampleOptions top1;
  top1.top_k = 1;
  EXPECT_EQ(sample_from_logits(logits.data(), 4, top1, 0.99), 1);
}

}  // namespace
}  // namespace tessera::models
