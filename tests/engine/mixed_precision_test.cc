// Mixed precision through the trainer:
// - the fp16 / bf16 config blocks (DeepSpeed's keys and defaults, refusals);
// - inf and nan injected into the reduced gradients at chosen steps give exactly the skip and
//   loss-scale sequence DeepSpeed's rules give (static, dynamic, with and without consecutive
//   hysteresis), skipped steps leave the weights untouched, and at the minimum scale training
//   stops with an error;
// - an overflow on one rank only is agreed by all ranks, at every ZeRO stage.
// The loss curves of bf16 and fp16 against fp32 are in slow/mixed_precision_curve_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine_test_util.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"
#include "models/weights_io.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

using test_util::Contains;

// --- configuration --------------------------------------------------------------------------

TrainConfig parse(const nlohmann::json& extra) {
  nlohmann::json j = {{"train_micro_batch_size_per_gpu", 1},
                      {"model", {{"preset", "nano"}}},
                      {"data", {{"train", "unused.bin"}}}};
  if (!extra.is_null()) j.update(extra);
  return parse_train_config(j.dump(), "test.json");
}

TEST(MixedPrecisionConfig, ReadsDeepSpeedKeysWithTheirDefaults) {
  EXPECT_EQ(parse({}).precision, DType::F32);
  EXPECT_EQ(parse({{"fp16", {{"enabled", false}}}}).precision, DType::F32);
  EXPECT_EQ(parse({{"fp16", nlohmann::json::object()}}).precision, DType::F32);  // off by default
  EXPECT_EQ(parse({{"bf16", {{"enabled", true}}}}).precision, DType::BF16);
  EXPECT_EQ(parse({{"bfloat16", {{"enabled", true}}}}).precision, DType::BF16);
  const TrainConfig c = parse({{"fp16",
                                {{"enabled", true},
                                 {"loss_scale", 0},
                                 {"initial_scale_power", 12},
                                 {"loss_scale_window", 500},
                                 {"hysteresis", 3},
                                 {"consecutive_hysteresis", true},
                                 {"min_loss_scale", 0.5}}}});
  EXPECT_EQ(c.precision, DType::F16);
  EXPECT_EQ(c.loss_scaler.loss_scale, 0.0f);
  EXPECT_EQ(c.loss_scaler.initial_scale_power, 12);
  EXPECT_EQ(c.loss_scaler.loss_scale_window, 500);
  EXPECT_EQ(c.loss_scaler.hysteresis, 3);
  EXPECT_TRUE(c.loss_scaler.consecutive_hysteresis);
  EXPECT_EQ(c.loss_scaler.min_loss_scale, 0.5f);
  const LossScalerConfig defaults = parse({{"fp16", {{"enabled", true}}}}).loss_scaler;
  EXPECT_EQ(defaults.initial_scale_power, 16);
  EXPECT_EQ(defaults.loss_scale_window, 1000);
  EXPECT_EQ(defaults.hysteresis, 2);
  EXPECT_FALSE(defaults.consecutive_hysteresis);
  EXPECT_EQ(defaults.min_loss_scale, 1.0f);
}

TEST(MixedPrecisionConfig, RefusesWhatItCannotHonour) {
  auto error = [](const nlohmann::json& extra) {
    return test_util::message_of<InvalidArgument>([&] { parse(extra); });
  };
  EXPECT_TRUE(Contains(error({{"fp16", {{"enabled", true}}}, {"bf16", {{"enabled", true}}}}),
                       "'fp16' and 'bf16' are both enabled"));
  EXPECT_TRUE(Contains(error({{"bf16", {{"enabled", true}}}, {"bfloat16", {{"enabled", true}}}}),
                       "'bf16' and 'bfloat16' are both enabled"));
  EXPECT_TRUE(Contains(error({{"fp16", {{"enabled", true}, {"hysteresis", 0}}}}), "hysteresis"));
  EXPECT_TRUE(Contains(error({{"fp16", {{"enabled", true}, {"loss_scale_windw", 10}}}}),
                       "did you mean 'fp16.loss_scale_window'"));
  EXPECT_TRUE(Contains(error({{"fp16", {{"auto_cast", true}}}}), "fp16.auto_cast"));
  EXPECT_TRUE(Contains(error({{"bf16", {{"enabled", "yes"}}}}), "bf16.enabled"));
}

// --- overflow handling ----------------------------------------------------------------------

TrainConfig fp16_config() {
  TrainConfig c;
  c.model = models::gpt_preset("nano");
  c.micro_batch_size = 2;
  c.gradient_accumulation_steps = 2;
  c.seq_len = 16;
  c.steps = 10;
  c.threads = 1;
  c.precision = DType::F16;
  c.loss_scaler.initial_scale_power = 10;  // 1024
  c.loss_scaler.loss_scale_window = 3;
  c.loss_scaler.hysteresis = 2;
  c.zero.reduce_bucket_size = 4000;
  c.train_files = {test_util::synthetic_token_file("mixed_tokens.bin")};
  c.output_dir = (std::filesystem::path(testing::TempDir()) / "tessera_mixed_run").string();
  return c;
}

// Poisons this rank's gradient shard at the chosen steps: inf, or nan where asked.
Trainer::GradientHook inject(std::set<int64_t> inf_steps, std::set<int64_t> nan_steps) {
  return [=](int64_t step, const memory::OptimizerShard& shard) {
    const bool inf = inf_steps.count(step) > 0, nan = nan_steps.count(step) > 0;
    if ((!inf && !nan) || shard.range.numel() == 0) return;
    ASSERT_EQ(shard.dtype, DType::F16);
    const uint16_t bits = nan ? 0x7E00 : 0x7C00;  // f16 quiet nan, +inf
    auto* g = static_cast<uint16_t*>(shard.grads);
    g[shard.range.numel() / 2] = bits;
  };
}

TEST(LossScaling, RefusesInitialWeightsBeyondFp16Range) {
  TrainConfig c = fp16_config();
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  std::vector<float> w(registry.numel(), 0.01f);
  w[registry.find("h.1.mlp.c_fc.weight").offset + 5] = 1e5f;
  test_util::ScratchDir dir;
  const std::string path = dir.file("big.safetensors");
  models::save_gpt_safetensors(path, c.model, registry, w.data());
  c.init_from = path;
  const std::string m = test_util::message_of<InvalidArgument>([&] { Trainer t(c); });
  EXPECT_TRUE(Contains(m, "'h.1.mlp.c_fc.weight'"));
  EXPECT_TRUE(Contains(m, "beyond fp16's largest finite value 65504"));
  c.precision = DType::BF16;  // bf16 has fp32's range
  Trainer t(c);
  EXPECT_FALSE(t.step().skipped);
}

struct Outcome {
  std::vector<double> scales;
  std::vector<int64_t> skipped_at;
};

Outcome run_steps(Trainer& t, int steps) {
  Outcome o;
  for (int i = 0; i < steps; ++i) {
    const StepStats s = t.step();
    EXPECT_TRUE(s.loss_scale.has_value());
    o.scales.push_back(s.loss_scale.value_or(-1));
    if (s.skipped) o.skipped_at.push_back(s.step);
    EXPECT_EQ(s.skipped_steps, static_cast<int64_t>(o.skipped_at.size()));
    EXPECT_EQ(s.overflow_count, static_cast<int64_t>(o.skipped_at.size()));
  }
  return o;
}

// Overflows at steps 2 and 3 (inf) and 6 (nan) of 11; window 3, hysteresis 2, from 1024.
// The expected scales (the scale each step ran with) follow DeepSpeed's
// DynamicLossScaler.update_scale step by step: 2 uses up one hysteresis, 3 halves; without
// consecutive hysteresis the next overflow (6) halves at once, and the clean step after three
// clean ones (10) doubles the scale for step 11 and refills the hysteresis.
constexpr int kScaleSteps = 11;
const std::vector<int64_t> kSkipped = {2, 3, 6};
const std::vector<double> kDynamicScales = {1024, 1024, 1024, 512, 512, 512,
                                            256,  256,  256,  256, 512};
// With consecutive hysteresis every clean step refills it, so step 6 only uses it up.
const std::vector<double> kConsecutiveScales = {1024, 1024, 1024, 512, 512, 512,
                                                512,  512,  512,  512, 1024};

TEST(LossScaling, DynamicScaleAndSkipsFollowDeepSpeedRules) {
  Trainer t(fp16_config());
  t.set_gradient_hook(inject({2, 3}, {6}));
  const Outcome o = run_steps(t, kScaleSteps);
  EXPECT_EQ(o.scales, kDynamicScales);
  EXPECT_EQ(o.skipped_at, kSkipped);
  EXPECT_EQ(t.updates_done(), 8);
}

TEST(LossScaling, ConsecutiveHysteresisOnlyLowersOnConsecutiveOverflows) {
  TrainConfig c = fp16_config();
  c.loss_scaler.consecutive_hysteresis = true;
  Trainer t(c);
  t.set_gradient_hook(inject({2, 3}, {6}));
  const Outcome o = run_steps(t, kScaleSteps);
  EXPECT_EQ(o.scales, kConsecutiveScales);
  EXPECT_EQ(o.skipped_at, kSkipped);
}

TEST(LossScaling, StaticScaleSkipsOverflowsAndNeverMoves) {
  TrainConfig c = fp16_config();
  c.loss_scaler.loss_scale = 128;
  Trainer t(c);
  t.set_gradient_hook(inject({2, 3}, {6}));
  const Outcome o = run_steps(t, kScaleSteps);
  EXPECT_EQ(o.scales, std::vector<double>(kScaleSteps, 128.0));
  EXPECT_EQ(o.skipped_at, kSkipped);
}

TEST(LossScaling, SkippedStepLeavesWeightsAndMomentsUntouched) {
  Trainer t(fp16_config());
  t.set_gradient_hook(inject({3}, {}));
  t.step();
  t.step();
  const std::vector<float> before = t.full_params();
  const StepStats s = t.step();
  ASSERT_TRUE(s.skipped);
  EXPECT_EQ(t.full_params(), before);
  EXPECT_FALSE(std::isfinite(s.grad_norm));
  const StepStats next = t.step();
  EXPECT_FALSE(next.skipped);
  EXPECT_NE(t.full_params(), before);
  EXPECT_EQ(t.updates_done(), 3);
}

TEST(LossScaling, OverflowAtTheMinimumScaleStopsTraining) {
  TrainConfig c = fp16_config();
  c.loss_scaler.initial_scale_power = 1;  // 2
  c.loss_scaler.hysteresis = 1;
  c.loss_scaler.min_loss_scale = 1;
  Trainer t(c);
  t.set_gradient_hook(inject({1, 2, 3}, {}));
  const StepStats first = t.step();  // 2 -> 1
  EXPECT_TRUE(first.skipped);
  const std::string m = test_util::message_of<Error>([&] { t.step(); });
  EXPECT_TRUE(Contains(m, "min_loss_scale"));
}

class LossScalingAcrossRanks : public testing::TestWithParam<int> {};

// Only rank 1's shard overflows; every rank must skip the same steps and move the scale the
// same way, or the replicas (and ZeRO's shards) would drift apart.
TEST_P(LossScalingAcrossRanks, OneRanksOverflowSkipsTheStepEverywhere) {
  TrainConfig c = fp16_config();
  c.zero.stage = GetParam();
  c.gradient_accumulation_steps = 1;  // per rank: the same global batch as fp16_config()
  std::vector<Outcome> outcomes(2);
  std::vector<std::vector<float>> weights(2);
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    Trainer t(c, &group);
    if (group.rank() == 1) t.set_gradient_hook(inject({2, 3}, {6}));
    outcomes[group.rank()] = run_steps(t, kScaleSteps);
    weights[group.rank()] = t.full_params();
  });
  for (const Outcome& o : outcomes) {
    EXPECT_EQ(o.scales, kDynamicScales);
    EXPECT_EQ(o.skipped_at, kSkipped);
  }
  EXPECT_EQ(weights[0], weights[1]);
}

INSTANTIATE_TEST_SUITE_P(ZeroStages, LossScalingAcrossRanks, testing::Values(0, 1, 2, 3),
                         [](const auto& info) { return "stage" + std::to_string(info.param); });

}  // namespace
}  // namespace tessera::engine
