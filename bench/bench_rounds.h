// What the side-by-side step benchmarks (bench_precision, bench_recompute) share: the model
// and batch options, how many rounds of timed steps run, and the config they start from.
#pragma once

#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

#include "bench/bench_data.h"
#include "runtime/core/logging.h"
#include "runtime/engine/config.h"

namespace tessera::bench {

struct RoundOptions {
  std::string preset = "gpt2-124M";
  int batch = 4, seq = 256, steps = 3, warmup = 1, rounds = 2, threads = 0;
};

// `compared`: what the rounds interleave ("precisions", "policies"), for the help text.
inline void add_round_options(CLI::App& app, RoundOptions& o, const std::string& compared) {
  app.add_option("--model", o.preset, "model preset")->capture_default_str();
  app.add_option("--batch", o.batch, "micro-batch size B")->capture_default_str();
  app.add_option("--seq", o.seq, "sequence length T")->capture_default_str();
  app.add_option("--steps", o.steps, "timed steps per configuration and round")
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--rounds", o.rounds, "rounds over the " + compared)->capture_default_str();
  app.add_option("--threads", o.threads, "OpenMP threads (0: all cores)")->capture_default_str();
}

// After parsing: quiet logs and the config that times one micro-batch per step.
inline engine::TrainConfig round_config(const RoundOptions& o) {
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();
  engine::TrainConfig cfg = step_config(o.preset, o.batch, o.seq);
  cfg.steps = o.warmup + o.steps;
  cfg.threads = o.threads;
  return cfg;
}

}  // namespace tessera::bench
