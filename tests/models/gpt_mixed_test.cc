// The GPT in bf16 / f16 mixed precision against the same model in fp32, run on the same
// 16-bit-representable weights, so every difference comes from rounding activations and
// gradients to 16 bits: losses, logits and per-layer gradients agree within stated bounds.
// Also: the accumulation contract, eval = training loss, and the refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/kernels/cpu_mixed.h"
#include "tests/models/model_test_util.h"

namespace tessera::models {
namespace {

namespace k = tessera::kernels::cpu;

GPTConfig mixed_config() { return {2, 4, 64, 96, 32}; }  // layers, heads, C, vocab, block

using test_util::random_tokens;

// One model in `dtype` with its own flat parameters and gradients, initialised from the
// same fp32 weights (rounded to 16 bits when the model is mixed).
struct ModelRun {
  ModelRun(const GPTConfig& cfg, DType dtype, const std::vector<float>& weights, int B, int T_)
      : model(cfg, dtype),
        elem(dtype_size(dtype)),
        params(weights.size() * elem),
        grads(weights.size() * elem, 0),
        access(model.registry(), params.data(), grads.data(), elem) {
    if (dtype == DType::F32) {
      std::memcpy(params.data(), weights.data(), weights.size() * sizeof(float));
    } else {
      k::to_16(dtype, weights.data(), reinterpret_cast<uint16_t*>(params.data()),
               static_cast<int64_t>(weights.size()));
    }
    model.allocate_activations(B, T_);
  }
  std::vector<float> grads_f32() const {
    const int64_t n = model.registry().numel();
    std::vector<float> out(n);
    if (elem == sizeof(float)) {
      std::memcpy(out.data(), grads.data(), n * sizeof(float));
    } else {
      k::from_16(model.dtype(), reinterpret_cast<const uint16_t*>(grads.data()), out.data(), n);
    }
    return out;
  }
  GPT<float> model;
  size_t elem;
  std::vector<uint8_t> params, grads;
  LocalParamAccess access;
};

// fp32 weights that are exactly representable in `dtype` (so both models start equal).
std::vector<float> representable_weights(const GPTConfig& cfg, DType dtype) {
  const ParamRegistry reg = build_gpt_registry(cfg);
  std::vector<float> w(reg.numel());
  init_params(reg, w.data(), 5);
  Rng rng(3);
  for (float& x : w) x += 0.05f * static_cast<float>(rng.uniform() - 0.5);  // LN gains, biases
  std::vector<uint16_t> bits(w.size());
  k::to_16(dtype, w.data(), bits.data(), static_cast<int64_t>(w.size()));
  k::from_16(dtype, bits.data(), w.data(), static_cast<int64_t>(w.size()));
  return w;
}

double relative_l2(const float* a, const float* b, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    norm += double{b[i]} * b[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

struct Bounds {
  DType dtype;
  double loss;  // relative
  double grad;  // relative L2 per layer
};

class GptMixed : public testing::TestWithParam<Bounds> {};

// bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3), f16 11 bits (2.4e-4); the
// bounds leave room for that rounding accumulating through two blocks and the head (measured:
// bf16 4e-3, f16 5e-4 worst layer gradient error).
TEST_P(GptMixed, LossAndEveryLayersGradientsMatchFp32) {
  const Bounds b = GetParam();
  const GPTConfig cfg = mixed_config();
  const int B = 3, T = 16;
  const std::vector<float> w = representable_weights(cfg, b.dtype);
  ModelRun ref(cfg, DType::F32, w, B, T), mixed(cfg, b.dtype, w, B, T);
  const auto in = random_tokens(B * T, cfg.vocab_size, 1);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 2);
  const double want = ref.model.forward_backward(ref.access, in.data(), tg.data(), B, T, 1.0);
  const double got = mixed.model.forward_backward(mixed.access, in.data(), tg.data(), B, T, 1.0);
  EXPECT_NEAR(got, want, b.loss * want);
  const std::vector<float> g_ref = ref.grads_f32(), g = mixed.grads_f32();
  const ParamRegistry& reg = ref.model.registry();
  double worst = 0;
  for (int l = 0; l < reg.num_layers(); ++l) {
    const LayerRange& r = reg.layer(l);
    const double err = relative_l2(g.data() + r.begin, g_ref.data() + r.begin, r.numel());
    EXPECT_LT(err, b.grad) << "layer " << l;
    worst = std::max(worst, err);
  }
  std::printf("[gpt mixed] %s: loss %.6f vs fp32 %.6f, worst layer gradient error %.2e\n",
              std::string(dtype_name(b.dtype)).c_str(), got, want, worst);
  // Evaluation runs the same arithmetic as training's forward.
  EXPECT_EQ(mixed.model.forward(mixed.access, in.data(), tg.data(), B, T), got);
  // Logits of a position, against fp32.
  ref.model.forward(ref.access, in.data(), nullptr, B, T);
  mixed.model.forward(mixed.access, in.data(), nullptr, B, T);
  std::vector<float> l_ref(cfg.vocab_size), l(cfg.vocab_size);
  ref.model.logits_at(ref.access, 1, 7, l_ref.data());
  mixed.model.logits_at(mixed.access, 1, 7, l.data());
  EXPECT_LT(relative_l2(l.data(), l_ref.data(), cfg.vocab_size), b.grad);
}

INSTANTIATE_TEST_SUITE_P(Precision, GptMixed,
                         testing::Values(Bounds{DType::BF16, 1e-3, 1.5e-2},
                                         Bounds{DType::F16, 2e-4, 2e-3}),
                         [](const auto& info) { return std::string(dtype_name(info.param.dtype)); });

TEST(GptMixedAccumulation, TwoHalfScaledPassesEqualOneFullPass) {
  const GPTConfig cfg = mixed_config();
  const int B = 2, T = 8;
  const std::vector<float> w = representable_weights(cfg, DType::BF16);
  ModelRun once(cfg, DType::BF16, w, B, T), twice(cfg, DType::BF16, w, B, T);
  const auto in = random_tokens(B * T, cfg.vocab_size, 4);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 5);
  once.model.forward_backward(once.access, in.data(), tg.data(), B, T, 1.0);
  twice.model.forward_backward(twice.access, in.data(), tg.data(), B, T, 0.5);
  twice.model.forward_backward(twice.access, in.data(), tg.data(), B, T, 0.5);
  // Halving is exact; the two halves add in fp32 and round once, as the one pass rounds.
  const std::vector<float> a = once.grads_f32(), b = twice.grads_f32();
  EXPECT_LT(relative_l2(b.data(), a.data(), static_cast<int64_t>(a.size())), 4e-3);
}

TEST(GptMixedRefusals, DtypesAndDecode) {
  const GPTConfig cfg = mixed_config();
  EXPECT_THROW(GPT<double>(cfg, DType::BF16), InvalidArgument);
  EXPECT_THROW(GPT<float>(cfg, DType::I32), InvalidArgument);
  EXPECT_THROW(GPT<float>(cfg, DType::F64), InvalidArgument);
  GPT<float> m(cfg, DType::F16);
  EXPECT_TRUE(m.mixed());
  std::vector<uint16_t> params(m.registry().numel()), grads(params.size());
  LocalParamAccess access(m.registry(), params.data(), grads.data(), 2);
  auto cache = m.make_kv_cache();
  std::vector<float> logits(cfg.vocab_size);
  EXPECT_THROW(m.decode_step(access, cache, 1, logits.data()), InvalidArgument);
}

TEST(GptMixedArena, PlannedBytesAreAllocatedAndSmallerPerBlock) {
  GPTConfig cfg = mixed_config();
  for (DType dtype : {DType::F32, DType::BF16}) {
    GPT<float> m(cfg, dtype);
    m.allocate_activations(4, 32);
    EXPECT_EQ(m.activation_bytes(), GPT<float>::activation_bytes_for(cfg, 4, 32, dtype));
  }
  // Each extra block costs less in bf16: its GEMM-only activations are 16-bit.
  auto per_block = [&](DType dtype) {
    GPTConfig more = cfg;
    more.n_layer += 1;
    return GPT<float>::activation_bytes_for(more, 4, 32, dtype) -
           GPT<float>::activation_bytes_for(cfg, 4, 32, dtype);
  };
  EXPECT_LT(per_block(DType::BF16), per_block(DType::F32));
}

}  // namespace
}  // namespace tessera::models
