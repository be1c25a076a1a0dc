// Shared by the thread-rank and mpirun tensor-parallel tests: a small model whose 4 heads split
// over t = 1, 2, 4, its runs, and the comparison with the single-rank run.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include <gtest/gtest.h>

#include "engine_test_util.h"
#include "parallel/comm/process_group.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine::test_util {

constexpr int kSteps = 10;

inline TrainConfig tp_config(int t, bool sp, int vocab, int accumulation) {
  TrainConfig c;
  c.model = {2, 4, 32, vocab, 32};  // 2 layers, 4 heads: t = 1, 2, 4 split them
  c.micro_batch_size = 2;
  c.gradient_accumulation_steps = accumulation;
  c.gradient_clipping = 0.5;  // below the early norms: clipping acts
  c.optimizer.lr = 3e-3f;
  c.seq_len = 32;
  c.steps = kSteps;
  c.threads = 1;
  c.tensor_parallel = t;
  c.sequence_parallel = sp;
  c.train_files = {test_util::synthetic_token_file("tp_tokens.bin")};
  c.output_dir = (std::filesystem::path(testing::TempDir()) / "tessera_tp_run").string();
  return c;
}

struct Run {
  std::vector<double> losses, norms;
  std::vector<std::optional<double>> scales;
};

// One rank's run of kSteps steps on `world` (null: alone).
inline Run run_steps(const TrainConfig& c, parallel::ProcessGroup* world) {
  Trainer t(c, world);
  Run r;
  for (int i = 0; i < kSteps; ++i) {
    const StepStats s = t.step();
    r.losses.push_back(s.loss);
    r.norms.push_back(s.grad_norm);
    r.scales.push_back(s.loss_scale);
  }
  return r;
}

// The same run on one rank (the reference).
inline Run single_rank(TrainConfig c) {
  c.tensor_parallel = 1;
  c.sequence_parallel = false;
  return run_steps(c, nullptr);
}

// norm_tolerance: 16-bit gradients are rounded per element, which their norm shows more
// than the loss does.
inline void expect_matches(const std::vector<Run>& runs, const Run& reference,
                           double tolerance, double norm_tolerance) {
  for (size_t r = 0; r < runs.size(); ++r) {
    ASSERT_EQ(runs[r].losses.size(), reference.losses.size());
    for (size_t s = 0; s < reference.losses.size(); ++s) {
      EXPECT_NEAR(runs[r].losses[s], reference.losses[s], tolerance * reference.losses[s])
          << "rank " << r << " step " << s + 1;
      EXPECT_NEAR(runs[r].norms[s], reference.norms[s], norm_tolerance * reference.norms[s])
          << "rank " << r << " step " << s + 1;
      EXPECT_EQ(runs[r].scales[s], runs[0].scales[s]) << "rank " << r << " step " << s + 1;
      // Every rank reports the same loss, bit for bit.
      EXPECT_EQ(runs[r].losses[s], runs[0].losses[s]) << "rank " << r << " step " << s + 1;
    }
  }
  EXPECT_LT(reference.losses.back(), reference.losses.front());  // it trained
}

}  // namespace tessera::engine::test_util
