// Tensor parallelism's layout, by counting: a rank's parameters are Megatron's split of the
// whole model (per-rank counts by formula, and every element of every split parameter held by
// exactly one rank, padding apart), and a block's activations per rank are an exact formula of
// the shapes (Stage::place_block), printed beside Korthikanti et al.'s for 16-bit activations
// ("Reducing Activation Recomputation in Large Transformer Models", 2022, section 4).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "models/gpt_layers.h"

namespace tessera::models {
namespace {

// ---- parameters -------------------------------------------------------------------------

// A rank's parameters under TpLayout{t, r}: column-parallel c_attn and c_fc (weights and
// biases) and row-parallel c_proj weights split t ways, their biases, the LayerNorms and wpe
// whole, wte a 1/t share of the padded vocabulary.
int64_t formula_local_params(const GPTConfig& config, int64_t t) {
  const int64_t C = config.n_embd;
  const int64_t block = 2 * C                        // ln_1
                        + 3 * C * C / t + 3 * C / t  // attn.c_attn
                        + C * C / t + C              // attn.c_proj (bias whole)
                        + 2 * C                      // ln_2
                        + 4 * C * C / t + 4 * C / t  // mlp.c_fc
                        + 4 * C * C / t + C;         // mlp.c_proj (bias whole)
  return config.n_layer * block + padded_vocab(config.vocab_size, static_cast<int>(t)) / t * C +
         int64_t{config.block_size} * C + 2 * C;
}

TEST(TensorParallelLayout, LocalParameterCountsAreMegatronsSplit) {
  const GPTConfig config = gpt_preset("gpt2-124M");
  for (const int t : {1, 2, 4}) {
    for (int r = 0; r < t; ++r) {
      SCOPED_TRACE(::testing::Message() << "t " << t << ", rank " << r);
      const ParamRegistry local = build_gpt_registry(config, 1, false, {t, r, false});
      EXPECT_EQ(local.numel(), formula_local_params(config, t));
    }
  }
  // t = 1 is the whole model; gpt2-124M's vocabulary (50304, llm.c's padding of 50257) pads
  // again to a multiple of 128 t.
  EXPECT_EQ(formula_local_params(config, 1), config.num_params());
  EXPECT_EQ(config.vocab_size, 50304);
  EXPECT_EQ(padded_vocab(config.vocab_size, 2), 50432);
  EXPECT_EQ(padded_vocab(config.vocab_size, 4), 50688);
}

GPTConfig small_config() {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 32;
  c.vocab_size = 257;  // pads to 512 at t = 2 and t = 4: the last ranks hold padding only
  c.block_size = 16;
  return c;
}

// Over the t ranks' parts of parameter `name`: how often each whole element is held, and how
// many local elements are padding (whole_index -1).
struct Coverage {
  std::vector<int> held;
  int64_t padding = 0;
};
Coverage coverage(const GPTConfig& config, int t, const std::string& name) {
  Coverage c;
  for (int r = 0; r < t; ++r) {
    const ParamRegistry local = build_gpt_registry(config, 1, false, {t, r, false});
    const ParamSpec& p = local.find(name);
    if (c.held.empty()) c.held.assign(static_cast<size_t>(p.whole_numel()), 0);
    EXPECT_EQ(p.whole_numel(), static_cast<int64_t>(c.held.size())) << name;
    for (int64_t j = 0; j < p.numel(); ++j) {
      const int64_t w = p.whole_index(j);
      if (w < 0) {
        ++c.padding;
        continue;
      }
      if (w >= static_cast<int64_t>(c.held.size())) {
        ADD_FAILURE() << name << " rank " << r << ": element " << j << " maps past the whole";
        continue;
      }
      ++c.held[static_cast<size_t>(w)];
    }
  }
  return c;
}

TEST(TensorParallelLayout, RanksCoverEveryWholeElementOnce) {
  const GPTConfig config = small_config();
  const int64_t C = config.n_embd, V = config.vocab_size;
  for (const int t : {2, 4}) {
    SCOPED_TRACE(::testing::Message() << "t " << t);
    const ParamRegistry rank0 = build_gpt_registry(config, 1, false, {t, 0, false});
    for (const ParamSpec& spec : rank0.params()) {
      SCOPED_TRACE(spec.name);
      if (spec.split == TpSplit::None) {
        // Replicated: every rank holds the whole parameter as it is.
        EXPECT_FALSE(spec.tp.split());
        EXPECT_EQ(spec.numel(), spec.whole_numel());
        continue;
      }
      const Coverage c = coverage(config, t, spec.name);
      for (size_t w = 0; w < c.held.size(); ++w) {
        ASSERT_EQ(c.held[w], 1) << "whole element " << w;
      }
      const int64_t expected_padding = spec.name == "wte.weight" ? (padded_vocab(V, t) - V) * C : 0;
      EXPECT_EQ(c.padding, expected_padding);
    }
  }
}

TEST(TensorParallelLayout, SplitsAreHeadsColumnsAndVocabularyRows) {
  const GPTConfig config = small_config();
  const int64_t C = config.n_embd, V = config.vocab_size;
  for (const int t : {2, 4}) {
    const int64_t Ca = C / t, Vr = padded_vocab(V, t) / t;
    for (int r = 0; r < t; ++r) {
      SCOPED_TRACE(::testing::Message() << "t " << t << ", rank " << r);
      const ParamRegistry local = build_gpt_registry(config, 1, false, {t, r, false});
      // c_attn [3C, C]: this rank's heads' rows of q, then of k, then of v.
      const ParamSpec& qkv = local.find("h.1.attn.c_attn.weight");
      ASSERT_EQ(qkv.shape, (Shape{3 * Ca, C}));
      for (int part = 0; part < 3; ++part) {
        for (int64_t i = 0; i < Ca; ++i) {
          for (const int64_t col : {int64_t{0}, C - 1}) {
            EXPECT_EQ(qkv.whole_index((part * Ca + i) * C + col),
                      (part * C + r * Ca + i) * C + col);
          }
        }
      }
      const ParamSpec& qkv_bias = local.find("h.1.attn.c_attn.bias");
      for (int part = 0; part < 3; ++part) {
        EXPECT_EQ(qkv_bias.whole_index(part * Ca), part * C + r * Ca);
      }
      // attn.c_proj [C, C]: every row, this rank's columns [r Ca, (r + 1) Ca).
      const ParamSpec& proj = local.find("h.0.attn.c_proj.weight");
      ASSERT_EQ(proj.shape, (Shape{C, Ca}));
      for (const int64_t row : {int64_t{0}, int64_t{5}, C - 1}) {
        for (int64_t j = 0; j < Ca; ++j) {
          EXPECT_EQ(proj.whole_index(row * Ca + j), row * C + r * Ca + j);
        }
      }
      // mlp.c_proj [C, 4C]: every row, this rank's columns of the hidden width.
      const ParamSpec& mlp_proj = local.find("h.0.mlp.c_proj.weight");
      EXPECT_EQ(mlp_proj.whole_index(3 * 4 * Ca + 1), 3 * 4 * C + r * 4 * Ca + 1);
      // wte: rows [r Vr, (r + 1) Vr) of the padded vocabulary, -1 past the real V rows.
      const ParamSpec& wte = local.find("wte.weight");
      ASSERT_EQ(wte.shape, (Shape{Vr, C}));
      for (int64_t i = 0; i < Vr; ++i) {
        const int64_t token = r * Vr + i;
        EXPECT_EQ(wte.whole_index(i * C + 7), token < V ? token * C + 7 : -1) << "row " << i;
      }
    }
  }
}

// ---- activations ------------------------------------------------------------------------

struct Shapes {
  int64_t b, s, h, a;  // micro-batch, sequence, hidden (n_embd), heads: the paper's letters
};

// One block's saved activations on one rank, in bytes, as Stage::place_block lays them out:
// rows = b s (sequence parallelism: b s / t) for the LayerNorm / residual regions; "stored"
// buffers (the GEMM operands ln1, qkv, atty, ln2, fch, fch_gelu) take `stored_bytes` per value
// (4 in f32, 2 in bf16 / f16) packed into fp32 words; the LayerNorm statistics, attention's
// log-sum-exp (one per row and local head: flash-style, no s x s probabilities) and the
// residual stream are fp32; every buffer is rounded up to 16 fp32 words (64 bytes).
int64_t our_block_bytes(const Shapes& x, int64_t t, bool sp, int64_t stored_bytes) {
  const int64_t bs = x.b * x.s, rows = sp ? bs / t : bs, ca = x.h / t, f = 4 * x.h / t;
  auto words = [](int64_t n) { return (n + 15) / 16 * 16; };                   // fp32 buffer
  auto stored = [&](int64_t n) { return words((n * stored_bytes + 3) / 4); };  // GEMM operand
  const int64_t total = stored(rows * x.h)                                     // ln1
                        + 2 * words(rows)                                      // ln1 mean, rstd
                        + stored(3 * bs * ca)                                  // qkv
                        + stored(bs * ca)                                      // atty
                        + words(x.b * (x.a / t) * x.s)                         // lse
                        + words(rows * x.h)                                    // residual2
                        + stored(rows * x.h)                                   // ln2
                        + 2 * words(rows)                                      // ln2 mean, rstd
                        + stored(bs * f)                                       // fch
                        + stored(bs * f)                                       // fch_gelu
                        + words(rows * x.h);                                   // residual3
  return 4 * total;
}

// The same without the 64-byte rounding, in closed form: with e = stored_bytes,
//   no SP:  e (2 sbh + 12 sbh / t) + 8 sbh + 16 sb + 4 a s b / t
//           = sbh (2e + 8 + 12e / t + 16 / h + 4a / (h t))
//   SP:     (e (2 sbh + 12 sbh) + 8 sbh + 16 sb + 4 a s b) / t
//           = sbh / t (14e + 8 + (16 + 4a) / h)
// bf16 (e = 2): sbh (12 + 24/t + (16 + 4a/t)/h), SP sbh/t (36 + (16 + 4a)/h);
// f32  (e = 4): sbh (16 + 48/t + (16 + 4a/t)/h), SP sbh/t (64 + (16 + 4a)/h).
int64_t our_block_bytes_closed(const Shapes& x, int64_t t, bool sp, int64_t e) {
  const int64_t sbh = x.s * x.b * x.h, sb = x.s * x.b;
  if (sp) return (e * 14 * sbh + 8 * sbh + 16 * sb + 4 * x.a * sb) / t;
  return e * (2 * sbh + 12 * sbh / t) + 8 * sbh + 16 * sb + 4 * x.a * sb / t;
}

// Korthikanti et al., bytes per layer for 16-bit activations with dropout, no recomputation:
// sbh (34 + 5as/h); tensor parallel sbh (10 + 24/t + 5as/(ht)); with sequence parallelism
// sbh/t (34 + 5as/h).
double korthikanti_bytes(const Shapes& x, int64_t t, bool sp) {
  const double sbh = static_cast<double>(x.s * x.b * x.h);
  const double attention = 5.0 * x.a * x.s / x.h;
  if (sp) return sbh / t * (34.0 + attention);
  return sbh * (10.0 + 24.0 / t + attention / t);
}

// One layer's activation bytes as the stage plans them: n_layer L + 1 minus n_layer L.
int64_t planned_block_bytes(GPTConfig config, int B, int T, DType dtype, TpLayout tp) {
  config.n_layer = 2;
  const int64_t two = GPT<float>::activation_bytes_for(config, B, T, dtype, {}, 1, tp);
  config.n_layer = 1;
  const int64_t one = GPT<float>::activation_bytes_for(config, B, T, dtype, {}, 1, tp);
  return two - one;
}

int64_t stored_bytes_of(DType dtype) { return dtype == DType::F32 ? 4 : 2; }

struct Layout {
  int t;
  bool sp;
};
const Layout kLayouts[] = {{1, false}, {2, false}, {2, true}, {4, false}, {4, true}};

TEST(TensorParallelActivations, OneBlockIsTheFormula) {
  GPTConfig config = small_config();
  config.block_size = 64;
  for (const DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    for (const Layout l : kLayouts) {
      // B T a multiple of 64: every buffer a whole number of 16 fp32 words, so the rounded
      // and the closed form agree; B T = 36 (SP over 4: 9 rows): only the rounded one does.
      for (const auto& [B, T] : {std::pair{2, 32}, std::pair{1, 64}, std::pair{3, 12}}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << ", t " << l.t << ", sp " << l.sp
                                          << ", B " << B << ", T " << T);
        const Shapes x{B, T, config.n_embd, config.n_head};
        const int64_t planned = planned_block_bytes(config, B, T, dtype, {l.t, 0, l.sp});
        EXPECT_EQ(planned, our_block_bytes(x, l.t, l.sp, stored_bytes_of(dtype)));
        if (int64_t{B} * T % 64 == 0) {
          EXPECT_EQ(planned, our_block_bytes_closed(x, l.t, l.sp, stored_bytes_of(dtype)));
        } else {
          EXPECT_NE(planned, our_block_bytes_closed(x, l.t, l.sp, stored_bytes_of(dtype)));
        }
      }
    }
  }
}

// gpt2-124M's shapes (s = 1024, b = 1, h = 768, a = 12): ours beside the paper's, per layer
// and rank. Printed for docs/, and recorded as test properties.
TEST(TensorParallelActivations, Gpt2BesideKorthikanti) {
  const GPTConfig config = gpt_preset("gpt2-124M");
  const Shapes x{1, 1024, config.n_embd, config.n_head};
  const double sbh = static_cast<double>(x.s * x.b * x.h);
  const double MiB = 1024.0 * 1024.0;
  std::cout << fmt::format("per layer and rank, s={} b={} h={} a={} (sbh = {}):\n", x.s, x.b, x.h,
                           x.a, x.s * x.b * x.h);
  std::cout << fmt::format("{:<10} {:>22} {:>22} {:>22} {:>8}\n", "layout", "ours f32", "ours bf16",
                           "Korthikanti 16-bit", "bf16/K");
  for (const Layout l : kLayouts) {
    const int64_t f32 = planned_block_bytes(config, 1, 1024, DType::F32, {l.t, 0, l.sp});
    const int64_t bf16 = planned_block_bytes(config, 1, 1024, DType::BF16, {l.t, 0, l.sp});
    EXPECT_EQ(f32, our_block_bytes_closed(x, l.t, l.sp, 4));
    EXPECT_EQ(bf16, our_block_bytes_closed(x, l.t, l.sp, 2));
    const double paper = korthikanti_bytes(x, l.t, l.sp);
    const std::string name = fmt::format("t={}{}", l.t, l.sp ? "+SP" : "");
    auto cell = [&](double bytes) {
      return fmt::format("{:.2f} MiB ({:.3f} sbh)", bytes / MiB, bytes / sbh);
    };
    std::cout << fmt::format("{:<10} {:>22} {:>22} {:>22} {:>8.3f}\n", name,
                             cell(static_cast<double>(f32)), cell(static_cast<double>(bf16)),
                             cell(paper), static_cast<double>(bf16) / paper);
    RecordProperty(name + "_ours_f32_bytes", std::to_string(f32));
    RecordProperty(name + "_ours_bf16_bytes", std::to_string(bf16));
    RecordProperty(name + "_korthikanti_bytes", fmt::format("{:.0f}", paper));
  }
}

}  // namespace
}  // namespace tessera::models
