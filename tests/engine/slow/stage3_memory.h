// ZeRO-3's honest memory, shared by the thread-rank test (stage3_memory_test.cc) and the
// mpirun one (tests/engine/mpi/): gpt2-124M in fp32, micro-batch 1 x 64, one step. Every
// rank's peak bytes over all categories, counted from before the trainer exists (so start-up
// is in it), stay within 1.15 x (16 Psi / N + the activations the stage allocates): no rank
// ever holds the whole model, the word embedding is gathered and reduced a chunk at a time,
// and the gathered layers and gradient slots are sized (DeepSpeed's knobs, one GEMM's weights
// each) to fit. The estimator's plan bounds the measurement closely. Before this, N = 4
// peaked at 1314 MiB a rank against a ZeRO share of 475 MiB.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>

#include "../engine_test_util.h"
#include "memory/zero/zero_plan.h"
#include "runtime/core/memory_stats.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine::test_util {

inline TrainConfig stage3_memory_config() {
  TrainConfig c;
  c.model = models::gpt_preset("gpt2-124M");
  c.precision = DType::F32;
  c.micro_batch_size = 1;
  c.gradient_accumulation_steps = 1;
  c.seq_len = 64;
  c.steps = 1;
  c.threads = 1;
  c.train_files = {synthetic_token_file("stage3_memory_tokens.bin")};
  c.zero.stage = 3;
  // One GEMM's weights (mlp.c_fc, 2.36M elements) per bucket, one layer prefetched, at most
  // two gathered at once.
  const int64_t layer = 4 * 768 * 768 + 4 * 768;
  c.zero.reduce_bucket_size = layer;
  c.zero.stage3_prefetch_bucket_size = layer;
  c.zero.stage3_max_live_parameters = 2 * layer;
  return c;
}

struct RankPeak {
  int64_t peak = 0, activations = 0, planned = 0;
};

// One rank's step, its memory tracked from the first allocation.
inline RankPeak measure_stage3_rank(const TrainConfig& c, parallel::ProcessGroup& group) {
  MemoryTracker tracker;
  RankPeak p;
  {
    ScopedTracker scoped(tracker);
    Trainer t(c, &group);
    t.step();
    p.activations = t.model().activation_bytes();
    p.planned = memory::plan_peak_bytes(t.model().registry(), c.zero.options(), group.rank(),
                                        group.size()) +
                p.activations;
  }
  p.peak = tracker.snapshot().total_peak;
  return p;
}

inline void expect_within_stage3_bound(const TrainConfig& c, int world, int rank,
                                       const RankPeak& p) {
  const double share = 16.0 * static_cast<double>(c.model.num_params()) / world;
  const double bound = 1.15 * (share + static_cast<double>(p.activations));
  std::printf("[stage 3 memory] N %d rank %d: peak %.1f MiB, bound %.1f MiB (16 Psi / N %.1f + "
              "activations %.1f), planned %.1f MiB\n",
              world, rank, p.peak / 1048576.0, bound / 1048576.0, share / 1048576.0,
              p.activations / 1048576.0, p.planned / 1048576.0);
  EXPECT_LE(static_cast<double>(p.peak), bound) << "N " << world << " rank " << rank;
  EXPECT_LE(p.peak, p.planned) << "N " << world << " rank " << rank;
  EXPECT_GE(static_cast<double>(p.peak), 0.9 * static_cast<double>(p.planned))
      << "N " << world << " rank " << rank;
}

}  // namespace tessera::engine::test_util
