// Activation checkpointing (models/recompute.h, Stage::set_recompute): every policy gives the
// same losses and the same gradients, bit for bit, as keeping every activation, in fp32,
// bf16, fp16 and f64, over several micro-batch slots; the block groups are what the policy
// says; and the activation bytes shrink as the formulas in docs/PERFORMANCE.md say.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/core/rng.h"
#include "tests/models/model_test_util.h"

namespace tessera::models {
namespace {

GPTConfig small_config() { return {5, 4, 64, 96, 32}; }  // layers, heads, C, vocab, block

using test_util::random_tokens;

// The working copy in dtype from fp32 values (16-bit rounding as the engine does).
void memory_fill_working(DType dtype, const std::vector<float>& src, std::vector<char>& dst) {
  if (dtype == DType::F32) {
    std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
    return;
  }
  auto* out = reinterpret_cast<uint16_t*>(dst.data());
  for (size_t i = 0; i < src.size(); ++i) {
    out[i] = dtype == DType::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
  }
}

RecomputePolicy full(int k, RecomputeMethod method = RecomputeMethod::Uniform) {
  RecomputePolicy p;
  p.granularity = RecomputeGranularity::Full;
  p.method = method;
  p.num_layers = k;
  return p;
}

// Two micro-batches on two slots, forwarded before either backward (as a pipeline stage
// would), then a third on slot 0: losses and the accumulated gradient bytes.
template <typename T>
struct Run {
  std::vector<double> losses;
  std::vector<char> grads;
};

template <typename T>
Run<T> run(DType dtype, const RecomputePolicy& policy) {
  const GPTConfig cfg = small_config();
  GPT<T> model(cfg, dtype);
  const int64_t n = model.registry().numel();
  const size_t elem = dtype_size(dtype);
  std::vector<float> init(n);
  init_params(model.registry(), init.data(), 7);
  std::vector<char> params(n * elem), grads(n * elem, 0);
  if constexpr (std::is_same_v<T, double>) {
    std::vector<double> d(init.begin(), init.end());
    std::memcpy(params.data(), d.data(), n * elem);
  } else {
    memory_fill_working(dtype, init, params);
  }
  LocalParamAccess access(model.registry(), params.data(), grads.data(), elem);
  Stage<T>& stage = model.stage();
  stage.set_recompute(policy);
  const int B = 2, S = 16;
  stage.allocate(2, B, S);
  const auto in0 = random_tokens(B * S, cfg.vocab_size, 1), tg0 = random_tokens(B * S, cfg.vocab_size, 2);
  const auto in1 = random_tokens(B * S, cfg.vocab_size, 3), tg1 = random_tokens(B * S, cfg.vocab_size, 4);
  Run<T> r;
  stage.forward(access, 0, in0.data(), B, S);
  stage.forward(access, 1, in1.data(), B, S);
  r.losses.push_back(stage.head(access, 1, tg1.data(), B, S, true, 0.5));
  stage.backward(access, 1, in1.data(), B, S);
  r.losses.push_back(stage.head(access, 0, tg0.data(), B, S, true, 0.5));
  stage.backward(access, 0, in0.data(), B, S);
  stage.forward(access, 0, in1.data(), B, S);
  r.losses.push_back(stage.head(access, 0, tg0.data(), B, S, true, 0.5));
  stage.backward(access, 0, in1.data(), B, S);
  r.grads = grads;
  return r;
}

template <typename T>
void expect_same(DType dtype, const RecomputePolicy& policy) {
  const Run<T> want = run<T>(dtype, RecomputePolicy{});
  const Run<T> got = run<T>(dtype, policy);
  EXPECT_EQ(got.losses, want.losses);
  EXPECT_TRUE(got.grads == want.grads) << "gradients differ";
}

class RecomputeBitIdentical : public testing::TestWithParam<DType> {};

TEST_P(RecomputeBitIdentical, FullUniformEveryBlock) { expect_same<float>(GetParam(), full(1)); }
TEST_P(RecomputeBitIdentical, FullUniformUnevenGroups) { expect_same<float>(GetParam(), full(2)); }
TEST_P(RecomputeBitIdentical, FullOneGroup) { expect_same<float>(GetParam(), full(5)); }
TEST_P(RecomputeBitIdentical, FullBlockMethod) {
  expect_same<float>(GetParam(), full(2, RecomputeMethod::Block));
}
TEST_P(RecomputeBitIdentical, NumberCheckpoints) {
  RecomputePolicy p = full(1);
  p.number_checkpoints = 2;  // 5 blocks: groups of 3 and 2
  expect_same<float>(GetParam(), p);
}
TEST_P(RecomputeBitIdentical, CpuCheckpointing) {
  RecomputePolicy p = full(1);
  p.cpu_checkpointing = true;
  expect_same<float>(GetParam(), p);
  p = full(2, RecomputeMethod::Block);
  p.cpu_checkpointing = true;
  expect_same<float>(GetParam(), p);
}
TEST_P(RecomputeBitIdentical, Selective) {
  RecomputePolicy p;
  p.granularity = RecomputeGranularity::Selective;
  expect_same<float>(GetParam(), p);
}

INSTANTIATE_TEST_SUITE_P(Precisions, RecomputeBitIdentical,
                         testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Recompute, DoubleFullAndSelective) {
  expect_same<double>(DType::F64, full(1));
  RecomputePolicy p;
  p.granularity = RecomputeGranularity::Selective;
  expect_same<double>(DType::F64, p);
}

TEST(Recompute, BlockGroupsFollowThePolicy) {
  using G = BlockGroup;
  EXPECT_EQ(plan_block_groups({}, 4), (std::vector<G>{{0, 4, false}}));
  EXPECT_EQ(plan_block_groups(full(1), 3), (std::vector<G>{{0, 1, true}, {1, 1, true}, {2, 1, true}}));
  EXPECT_EQ(plan_block_groups(full(2), 5), (std::vector<G>{{0, 2, true}, {2, 2, true}, {4, 1, true}}));
  EXPECT_EQ(plan_block_groups(full(2, RecomputeMethod::Block), 5),
            (std::vector<G>{{0, 1, true}, {1, 1, true}, {2, 3, false}}));
  EXPECT_EQ(plan_block_groups(full(9, RecomputeMethod::Block), 2),
            (std::vector<G>{{0, 1, true}, {1, 1, true}}));
  RecomputePolicy n = full(1);
  n.number_checkpoints = 4;  // 12 blocks: 4 groups of 3
  EXPECT_EQ(plan_block_groups(n, 12).size(), 4u);
  EXPECT_EQ(plan_block_groups(n, 12)[3], (G{9, 3, true}));
  EXPECT_THROW(plan_block_groups(full(0), 3), InvalidArgument);
  EXPECT_TRUE(plan_block_groups(full(1), 0).empty());
}

// Activation bytes per micro-batch slot, against the formulas (docs/PERFORMANCE.md): without
// checkpointing a block keeps 14 B T C stored values (LayerNorm outputs 2, q/k/v 3, attention
// output 1, MLP 8) and 2 B T C + 4 B T + B H T fp32 ones (residual stream, LayerNorm
// statistics, log-sum-exp); under full (every block) one fp32 B T C checkpoint; under
// selective 2 B T C stored values fewer (6 with fp32 storage: the GELU output too).
TEST(Recompute, ActivationBytesFollowTheFormulas) {
  const GPTConfig cfg{12, 4, 128, 96, 64};
  const int B = 2, S = 64;  // every buffer a multiple of 16 floats: no alignment padding
  const int64_t BT = int64_t{B} * S, BTC = BT * cfg.n_embd, L = cfg.n_layer;
  for (DType dtype : {DType::F32, DType::BF16}) {
    const int64_t stored = static_cast<int64_t>(dtype_size(dtype));
    const int64_t block = 14 * BTC * stored + (2 * BTC + 4 * BT + int64_t{B} * cfg.n_head * S) * 4;
    const int64_t input = BTC * 4, lnf = BTC * stored + 3 * BT * 4;
    GPT<float> model(cfg, dtype);
    Stage<float>& stage = model.stage();
    auto per_slot = [&] { return stage.activation_bytes_for(2, B, S) - stage.activation_bytes_for(1, B, S); };
    EXPECT_EQ(per_slot(), input + L * block + lnf) << dtype_name(dtype);
    stage.set_recompute(full(1));
    EXPECT_EQ(per_slot(), input + L * BTC * 4 + lnf) << dtype_name(dtype);
    // The shared working set grows by one block (and nothing else): 2sbh-style checkpoints
    // per slot plus one block's activations.
    stage.set_recompute(full(3));
    EXPECT_EQ(per_slot(), input + (L / 3) * BTC * 4 + lnf) << dtype_name(dtype);
    RecomputePolicy sel;
    sel.granularity = RecomputeGranularity::Selective;
    stage.set_recompute(sel);
    const int64_t dropped = (dtype == DType::F32 ? 6 : 2) * BTC * stored;
    EXPECT_EQ(per_slot(), input + L * (block - dropped) + lnf) << dtype_name(dtype);
  }
}

TEST(Recompute, RefusesCpuCheckpointingWithoutFull) {
  GPT<float> model(small_config());
  RecomputePolicy p;
  p.granularity = RecomputeGranularity::Selective;
  p.cpu_checkpointing = true;
  EXPECT_THROW(model.stage().set_recompute(p), InvalidArgument);
}

}  // namespace
}  // namespace tessera::models
