// The head on its own copy of the word embedding (GptLayers::head_copy), as a last pipeline
// stage that does not hold the embedding runs it: two stages, [embeddings, block 0] and
// [block 1, ln_f, head], with the activation and its gradient handed over by hand, and the
// tied gradients summed (GptLayers::tied_layers, what Megatron's embedding group
// all-reduces), give the one-stage tied model's loss and gradients bit for bit in f32 and
// f64, whole and chunked. Every input token is distinct, so each wte row receives one
// embedding gradient and the order of the two sums does not matter.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "models/gpt.h"
#include "models/stage.h"
#include "runtime/kernels/ops.h"

namespace tessera::models {
namespace {

GPTConfig small_config() { return {2, 2, 8, 11, 6}; }

template <typename T>
void expect_two_stages_with_a_head_copy_match_one(int chunks) {
  const GPTConfig cfg = small_config();
  const int B = 2, T_ = 5;
  const int64_t C = cfg.n_embd, V = cfg.vocab_size;
  std::vector<int32_t> inputs(B * T_), targets(B * T_);
  std::iota(inputs.begin(), inputs.end(), 0);  // distinct tokens 0..9
  for (int i = 0; i < B * T_; ++i) targets[i] = static_cast<int32_t>((3 * i + 1) % V);

  // One stage, the head tied to wte in place.
  GPT<T> tied(cfg, dtype_of<T>(), Device::cpu(), chunks);
  const int64_t n = tied.registry().numel();
  std::vector<T> p_tied(n), g_tied(n, T(0));
  init_params(tied.registry(), p_tied.data(), 5);
  LocalParamAccess tied_access(tied.registry(), p_tied.data(), g_tied.data(), sizeof(T));
  tied.allocate_activations(B, T_);
  const double tied_loss =
      tied.forward_backward(tied_access, inputs.data(), targets.data(), B, T_, 1.0);

  // Two stages over a registry with lm_head.weight after ln_f, filled with wte's values.
  const GptLayers layers(cfg, chunks, /*head_copy=*/true);
  const ParamRegistry reg = build_gpt_registry(cfg, chunks, /*head_copy=*/true);
  ASSERT_EQ(reg.num_layers(), layers.num_layers());
  const ParamSpec& wte = reg.find("wte.weight");
  const ParamSpec& head = reg.find("lm_head.weight");
  ASSERT_EQ(head.offset, n);  // everything else keeps its offset
  std::vector<T> p(reg.numel()), g(reg.numel(), T(0));
  std::copy(p_tied.begin(), p_tied.end(), p.begin());
  std::copy_n(p.begin() + wte.offset, V * C, p.begin() + head.offset);
  LocalParamAccess access(reg, p.data(), g.data(), sizeof(T));
  auto ops = kernels::make_ops<T>(Device::cpu(), dtype_of<T>());
  const int mid = layers.first_layer_of_block(1);
  Stage<T> first(cfg, layers, reg, *ops, 0, mid);
  Stage<T> last(cfg, layers, reg, *ops, mid, layers.num_layers());
  ASSERT_TRUE(first.has_embedding() && !first.has_head());
  ASSERT_TRUE(last.has_head() && !last.has_embedding());
  first.allocate(1, B, T_);
  last.allocate(1, B, T_);
  first.forward(access, 0, inputs.data(), B, T_);
  std::copy_n(first.output(0), B * T_ * C, last.input(0));
  last.forward(access, 0, nullptr, B, T_);
  const double loss = last.head(access, 0, targets.data(), B, T_, true, 1.0) / (B * T_);
  last.backward(access, 0, nullptr, B, T_);
  std::copy_n(last.input_grad(), B * T_ * C, first.output_grad());
  first.backward(access, 0, inputs.data(), B, T_);
  for (const GptLayers::Tied& t : layers.tied_layers()) {
    const LayerRange a = reg.layer(t.wte_layer), b = reg.layer(t.head_layer);
    ASSERT_EQ(b.numel(), t.elems);
    for (int64_t i = 0; i < t.elems; ++i) {
      const T sum = g[b.begin + i] + g[a.begin + i];  // the head's part first, as tied
      g[a.begin + i] = g[b.begin + i] = sum;
    }
  }

  EXPECT_EQ(loss, tied_loss);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(g[i], g_tied[i]) << "element " << i;
  for (int64_t i = 0; i < V * C; ++i) {
    ASSERT_EQ(g[head.offset + i], g_tied[wte.offset + i]) << "lm_head element " << i;
  }
}

TEST(HeadCopy, TwoStagesMatchTheTiedModelBitForBitInDouble) {
  expect_two_stages_with_a_head_copy_match_one<double>(1);
  expect_two_stages_with_a_head_copy_match_one<double>(3);
}

TEST(HeadCopy, TwoStagesMatchTheTiedModelBitForBitInFloat) {
  expect_two_stages_with_a_head_copy_match_one<float>(1);
  expect_two_stages_with_a_head_copy_match_one<float>(3);
}

TEST(HeadCopy, ALastStageWithoutTheEmbeddingNeedsTheCopy) {
  const GPTConfig cfg = small_config();
  const GptLayers tied(cfg);
  const ParamRegistry reg = build_gpt_registry(cfg);
  auto ops = kernels::make_ops<float>(Device::cpu(), DType::F32);
  try {
    Stage<float> last(cfg, tied, reg, *ops, tied.first_layer_of_block(1), tied.num_layers());
    ADD_FAILURE() << "a head without its embedding was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("head copy"), std::string::npos) << e.what();
  }
  // A stage may not end inside ln_f and the head copy, nor split a block.
  const GptLayers copy(cfg, 1, true);
  const ParamRegistry reg_copy = build_gpt_registry(cfg, 1, true);
  EXPECT_THROW(Stage<float>(cfg, copy, reg_copy, *ops, 0, copy.lnf_layer() + 1), InvalidArgument);
  EXPECT_THROW(Stage<float>(cfg, copy, reg_copy, *ops, 0, copy.first_layer_of_block(1) + 1),
               InvalidArgument);
  EXPECT_EQ(copy.tied_layers().size(), 1u);
  EXPECT_TRUE(tied.tied_layers().empty());
}

}  // namespace
}  // namespace tessera::models
