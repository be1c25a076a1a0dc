// Data parallelism (ZeRO stage 0) reproduces single-rank training: the same global batch
// split over 2 or 4 thread ranks gives the same losses, step by step, in fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <mutex>
#include <vector>

#include "engine_test_util.h"
#include "parallel/comm/thread_group.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

// Tokens with some structure (a noisy repeating pattern) so that the loss moves.
TrainConfig base_config(int micro_batch, int accumulation, bool clip) {
  TrainConfig c;
  c.model = models::gpt_preset("nano");
  c.micro_batch_size = micro_batch;
  c.gradient_accumulation_steps = accumulation;
  c.gradient_clipping = clip ? 0.5 : 0.0;  // 0.5 is below the early norms: clipping acts
  c.optimizer.lr = 3e-3f;
  c.seq_len = 32;
  c.steps = 10;
  c.threads = 1;
  c.zero.reduce_bucket_size = 4000;  // several buckets even for nano
  c.train_files = {test_util::synthetic_token_file("dp_tokens.bin")};
  c.output_dir = (std::filesystem::path(testing::TempDir()) / "tessera_dp_run").string();
  return c;
}

std::vector<double> single_rank_losses(TrainConfig c) {
  Trainer t(std::move(c));
  std::vector<double> losses;
  for (int i = 0; i < 10; ++i) losses.push_back(t.step().loss);
  return losses;
}

std::vector<std::vector<double>> dp_losses(int world, const TrainConfig& c) {
  std::vector<std::vector<double>> per_rank(world);
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    Trainer t(c, &group);
    for (int i = 0; i < 10; ++i) per_rank[group.rank()].push_back(t.step().loss);
  });
  return per_rank;
}

struct DpCase {
  int world;
  int accumulation;  // per rank
  bool clip;
};

class DataParallelEquivalence : public testing::TestWithParam<DpCase> {};

TEST_P(DataParallelEquivalence, LossesMatchSingleRankWithin1e5Relative) {
  const DpCase p = GetParam();
  // Single rank: micro-batch 2, accumulation world x accumulation: the same global batch.
  const auto reference = single_rank_losses(base_config(2, p.world * p.accumulation, p.clip));
  const auto ranks = dp_losses(p.world, base_config(2, p.accumulation, p.clip));
  for (int r = 0; r < p.world; ++r) {
    ASSERT_EQ(ranks[r].size(), reference.size());
    for (size_t s = 0; s < reference.size(); ++s) {
      EXPECT_NEAR(ranks[r][s], reference[s], 1e-5 * std::abs(reference[s]))
          << "rank " << r << " step " << s + 1;
    }
  }
  EXPECT_LT(reference.back(), reference.front());  // it trained
}

INSTANTIATE_TEST_SUITE_P(ThreadRanks, DataParallelEquivalence,
                         testing::Values(DpCase{2, 1, false}, DpCase{2, 2, true},
                                         DpCase{4, 1, true}, DpCase{4, 2, false}),
                         [](const auto& info) {
                           return "world" + std::to_string(info.param.world) + "_accum" +
                                  std::to_string(info.param.accumulation) +
                                  (info.param.clip ? "_clip" : "");
                         });

TEST(DataParallel, RankFailureFailsEveryRank) {
  TrainConfig c = base_config(2, 1, false);
  EXPECT_THROW(parallel::spawn_ranks(2,
                                     [&](parallel::ProcessGroup& group) {
                                       Trainer t(c, &group);
                                       t.step();
                                       if (group.rank() == 1) throw InvalidArgument("rank 1 fails");
                                       t.step();  // rank 0 must not hang here
                                     }),
               std::exception);
}

}  // namespace
}  // namespace tessera::engine
