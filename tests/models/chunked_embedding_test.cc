// The word embedding in row chunks (ZeRO-3's layout, models/gpt_layers.h) computes the same
// model as the whole embedding: the same flat parameters give the same loss, gradients,
// logits and decoded logits, to rounding (the head's softmax is summed chunk by chunk), and
// the chunked graph's gradients match finite differences in double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "models/gpt.h"
#include "runtime/core/half.h"
#include "runtime/core/rng.h"
#include "tests/models/model_test_util.h"

namespace tessera::models {
namespace {

// Vocabulary 11 in chunks of 4, 4 and 3 rows.
GPTConfig small_config() { return {2, 2, 8, 11, 6}; }
constexpr int kChunks = 3;

using test_util::random_tokens;

// A GPT over its own flat buffers; storage is T for f32 / f64 and 16-bit (held in uint16_t)
// for bf16 / f16, where the fp32 initial values are rounded in.
template <typename T>
struct Model {
  Model(const GPTConfig& cfg, int chunks, DType dtype, int B, int T_)
      : model(cfg, dtype, Device::cpu(), chunks) {
    const int64_t n = model.registry().numel();
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    params.assign(bytes, 0);
    grads.assign(bytes, 0);
    std::vector<T> init(static_cast<size_t>(n));
    init_params(model.registry(), init.data(), 7);
    Rng rng(99);  // larger than init: every path matters
    for (T& p : init) p += static_cast<T>(0.3 * (rng.uniform() - 0.5));
    if (dtype == dtype_of<T>()) {
      std::copy_n(reinterpret_cast<const char*>(init.data()), bytes, params.data());
    } else {
      std::vector<float> wide(init.begin(), init.end());
      auto* out = reinterpret_cast<uint16_t*>(params.data());
      for (int64_t i = 0; i < n; ++i) {
        out[i] = dtype == DType::BF16 ? f32_to_bf16(wide[i]) : f32_to_f16(wide[i]);
      }
    }
    access = std::make_unique<LocalParamAccess>(model.registry(), params.data(), grads.data(),
                                                dtype_size(dtype));
    model.allocate_activations(B, T_);
  }
  // The gradients widened to double.
  std::vector<double> grads_wide() const {
    const int64_t n = model.registry().numel();
    std::vector<double> out(static_cast<size_t>(n));
    const DType d = model.dtype();
    for (int64_t i = 0; i < n; ++i) {
      if (d == dtype_of<T>()) {
        out[i] = reinterpret_cast<const T*>(grads.data())[i];
      } else {
        const uint16_t h = reinterpret_cast<const uint16_t*>(grads.data())[i];
        out[i] = d == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
    return out;
  }
  GPT<T> model;
  std::vector<char> params, grads;
  std::unique_ptr<LocalParamAccess> access;
};

double max_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 0.0, diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(a[i]));
    diff = std::max(diff, std::abs(a[i] - b[i]));
  }
  return diff / std::max(scale, 1e-30);
}

template <typename T>
void expect_same_model(DType dtype, double tolerance) {
  const GPTConfig cfg = small_config();
  const int B = 2, T_ = 5;
  Model<T> whole(cfg, 1, dtype, B, T_), chunked(cfg, kChunks, dtype, B, T_);
  ASSERT_EQ(chunked.model.layers().wte_chunks, kChunks);
  ASSERT_EQ(whole.model.registry().numel(), chunked.model.registry().numel());
  const auto in = random_tokens(B * T_, cfg.vocab_size, 1);
  const auto tg = random_tokens(B * T_, cfg.vocab_size, 2);
  // Twice: gradients accumulate over micro-batches in both layouts.
  for (int pass = 0; pass < 2; ++pass) {
    const double a = whole.model.forward_backward(*whole.access, in.data(), tg.data(), B, T_, 1.0);
    const double b =
        chunked.model.forward_backward(*chunked.access, in.data(), tg.data(), B, T_, 1.0);
    EXPECT_NEAR(a, b, tolerance * std::abs(a)) << "pass " << pass;
  }
  EXPECT_LE(max_relative_difference(whole.grads_wide(), chunked.grads_wide()), tolerance);
  // Logits after a forward without targets.
  whole.model.forward(*whole.access, in.data(), nullptr, B, T_);
  chunked.model.forward(*chunked.access, in.data(), nullptr, B, T_);
  std::vector<T> la(cfg.vocab_size), lb(cfg.vocab_size);
  whole.model.logits_at(*whole.access, 1, 3, la.data());
  chunked.model.logits_at(*chunked.access, 1, 3, lb.data());
  for (int v = 0; v < cfg.vocab_size; ++v) {
    EXPECT_NEAR(la[v], lb[v], tolerance * (1 + std::abs(la[v]))) << "vocabulary row " << v;
  }
}

TEST(ChunkedEmbedding, SameModelAsTheWholeEmbeddingInDouble) {
  expect_same_model<double>(DType::F64, 1e-12);
}
TEST(ChunkedEmbedding, SameModelAsTheWholeEmbeddingInFloat) {
  expect_same_model<float>(DType::F32, 2e-5);
}
TEST(ChunkedEmbedding, SameModelAsTheWholeEmbeddingInBf16) {
  expect_same_model<float>(DType::BF16, 2e-2);
}
TEST(ChunkedEmbedding, SameModelAsTheWholeEmbeddingInFp16) {
  expect_same_model<float>(DType::F16, 5e-3);
}

TEST(ChunkedEmbedding, GradientsMatchFiniteDifferencesInDouble) {
  const GPTConfig cfg = small_config();
  const int B = 2, T_ = 5;
  Model<double> m(cfg, kChunks, DType::F64, B, T_);
  const auto in = random_tokens(B * T_, cfg.vocab_size, 3);
  const auto tg = random_tokens(B * T_, cfg.vocab_size, 4);
  m.model.forward_backward(*m.access, in.data(), tg.data(), B, T_, 1.0);
  const std::vector<double> analytic = m.grads_wide();
  auto* p = reinterpret_cast<double*>(m.params.data());
  const double h = 1e-6;
  double max_err = 0.0, max_grad = 0.0;
  // The embeddings (every chunk and wpe) and the first block, where the chunked paths are.
  const int64_t checked = m.model.registry().layer(m.model.layers().block_layer(0, kMlpOut)).end;
  for (int64_t i = 0; i < checked; ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = m.model.forward(*m.access, in.data(), tg.data(), B, T_);
    p[i] = saved - h;
    const double down = m.model.forward(*m.access, in.data(), tg.data(), B, T_);
    p[i] = saved;
    max_err = std::max(max_err, std::abs((up - down) / (2 * h) - analytic[i]));
    max_grad = std::max(max_grad, std::abs(analytic[i]));
  }
  EXPECT_GT(max_grad, 1e-3);
  EXPECT_LT(max_err, 1e-7 * std::max(1.0, max_grad));
}

TEST(ChunkedEmbedding, DecodingReadsEveryChunk) {
  const GPTConfig cfg = small_config();
  Model<double> whole(cfg, 1, DType::F64, 1, 4), chunked(cfg, kChunks, DType::F64, 1, 4);
  auto cw = whole.model.make_kv_cache();
  auto cc = chunked.model.make_kv_cache();
  std::vector<double> lw(cfg.vocab_size), lc(cfg.vocab_size);
  for (int32_t token : {0, 5, 10, 7}) {  // a row of each chunk, the last row
    whole.model.decode_step(*whole.access, cw, token, lw.data());
    chunked.model.decode_step(*chunked.access, cc, token, lc.data());
    for (int v = 0; v < cfg.vocab_size; ++v) EXPECT_NEAR(lw[v], lc[v], 1e-12) << token << " " << v;
  }
}

}  // namespace
}  // namespace tessera::models
