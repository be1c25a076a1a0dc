// Benchmark (not a test): step time of ZeRO stages 0-3 at N thread ranks (one core each) on
// the same model and global batch, and the bytes each rank's collectives move per step
// (ring model, parallel/comm/counting_group.h) beside the paper's 2 Psi (stages 0-2) and
// 3 Psi (stage 3), Psi = the model's bytes in the working dtype (--dtype f32, bf16 or f16),
// each times (N-1)/N.
//   build/bench/bench_zero --model gpt2-124M --batch 4 --seq 256 --ranks 2 --steps 2 --dtype bf16
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <mutex>
#include <vector>

#include "bench/bench_data.h"
#include "parallel/comm/counting_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"

int main(int argc, char** argv) {
  using namespace tessera;
  CLI::App app{"ZeRO stage benchmark"};
  std::string preset = "gpt2-124M";
  int batch = 4, seq = 256, ranks = 2, steps = 2;
  std::string dtype = "f32";
  app.add_option("--model", preset)->capture_default_str();
  app.add_option("--batch", batch, "micro-batch per rank")->capture_default_str();
  app.add_option("--seq", seq)->capture_default_str();
  app.add_option("--ranks", ranks)->capture_default_str();
  app.add_option("--steps", steps, "timed steps per stage")->capture_default_str();
  app.add_option("--dtype", dtype, "working precision: f32, bf16 or f16")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();

  engine::TrainConfig cfg = bench::step_config(preset, batch, seq);
  cfg.threads = 1;
  bench::use_random_tokens(cfg, "tessera_bench_zero",
                           static_cast<size_t>(batch) * seq * ranks * (steps + 2) + 1);

  cfg.precision = parse_dtype(dtype);
  cfg.loss_scaler.initial_scale_power = 12;  // no skipped steps in a short timing run
  const double psi =
      static_cast<double>(dtype_size(cfg.precision)) * cfg.model.num_params() * (ranks - 1) / ranks;
  std::printf("%s, %s, %d thread ranks x 1 core, micro-batch %d x %d per rank\n",
              preset.c_str(), dtype.c_str(), ranks, batch, seq);
  std::printf("| stage | ms/step | vs stage 0 | MB moved per rank per step | in Psi (N-1)/N | "
              "paper |\n|---|---|---|---|---|---|\n");
  double stage0_ms = 0;
  for (int stage = 0; stage <= 3; ++stage) {
    cfg.zero.stage = stage;
    double ms = 0;
    int64_t volume = 0;
    parallel::spawn_ranks(ranks, [&](parallel::ProcessGroup& group) {
      omp_set_num_threads(1);
      parallel::CountingGroup counted(group);
      engine::Trainer trainer(cfg, &counted);
      trainer.step();  // warm-up: page faults, stage-3 gather order recorded
      counted.reset();
      double total = 0;
      for (int i = 0; i < steps; ++i) total += trainer.step().ms;
      if (group.rank() == 0) {
        ms = total / steps;
        volume = counted.volume_bytes() / steps;
      }
    });
    if (stage == 0) stage0_ms = ms;
    std::printf("| %d | %.0f | %.2fx | %.1f | %.2f | %s |\n", stage, ms, ms / stage0_ms,
                volume / 1e6, volume / psi, stage == 3 ? "3" : "2");
    std::fflush(stdout);
  }
  return 0;
}
