// Shared by the thread-rank and mpirun pipeline-parallel tests: a small model whose 8 blocks
// split over p = 2 and 4 stages (and 2 chunks each, interleaved), its runs, and the
// comparison with the single-rank run.
#pragma once

#include <filesystem>
#include <string>

#include "tensor_parallel_checks.h"

namespace tessera::engine::test_util {

// 8 blocks, 4 heads: p = 2, 4 with v = 2 chunks fit (p v <= 8), and t = 2 splits the heads.
inline TrainConfig pp_config(int p, const std::string& schedule, int micro_batches, int v = 1) {
  TrainConfig c = tp_config(1, false, 257, micro_batches);
  c.model = {8, 4, 32, 257, 32};
  c.pipeline_parallel = p;
  c.virtual_pipeline = v;
  c.pipeline_schedule = schedule;
  c.output_dir = (std::filesystem::path(testing::TempDir()) / "tessera_pp_run").string();
  return c;
}

// The same run without model parallelism, on `dp` data-parallel ranks (thread ranks when
// dp > 1): what a DP x TP x PP run must reproduce.
inline TrainConfig without_model_parallelism(TrainConfig c) {
  c.pipeline_parallel = 1;
  c.virtual_pipeline = 1;
  c.pipeline_schedule = "1f1b";
  c.tensor_parallel = 1;
  c.sequence_parallel = false;
  return c;
}

}  // namespace tessera::engine::test_util
